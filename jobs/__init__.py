"""The job runner: starts worker processes, installs jobs on a switch, coordinates, compares
compressors, writes run folders; the demo. It may use every part; worker/ never imports it."""
