"""The fleet back-end: one machine drives every POP and game server over SSH (Fabric)."""
