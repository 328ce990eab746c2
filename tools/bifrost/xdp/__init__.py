"""The POP's XDP program: build, load, configure, observe."""
