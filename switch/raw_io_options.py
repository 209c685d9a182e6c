"""The choices of interface-mode I/O, importable without numba (`nina switch --help` reads
them; switch.io_raw and switch.packet_rings use them)."""

IO_KINDS = ("ring", "mmsg")   # PACKET_MMAP rings (default) or recvmmsg/sendmmsg
DEFAULT_RX_MIB = 4            # receive ring per port; switch.packet_rings says what it holds
UPDATES_PER_MIB = 2600        # NINA updates a MiB of receive ring holds (400 bytes each)
