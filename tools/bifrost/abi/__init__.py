"""The chardev ABI: one definition per device renders the C uapi header and the Python codec."""
