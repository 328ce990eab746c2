"""The POP's A2S cache: bifrost_nf control, the cache daemon, the A2S codec."""
