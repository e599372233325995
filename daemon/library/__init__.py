"""The library: the model files the user already has (SPEC §10).

walk (find files) → hashcache + hashing (SHA256, shared by inode) → sidecars_in
(what peers left beside the files) → identify (Civitai in bulk) → store (the
library table) → sidecars out; `scan.Scanner` runs that in its own thread.
"""
