"""Build D4RL-style offline datasets locally, in Minari format (locomotion and PointMaze)."""
