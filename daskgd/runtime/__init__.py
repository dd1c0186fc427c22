"""Runtime: what runs on the workers: codecs on the wire, emulation, cluster tuning."""
