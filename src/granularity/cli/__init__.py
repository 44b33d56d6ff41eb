"""The command line: a thin layer over the library (every command is one Python call)."""
