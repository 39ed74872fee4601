"""SMS text shared by the adapters that send it: segment counting and replies."""
