"""Wire protocols of vending-machine controller boards, and a board simulator.

Spec: PROTOCOL.md. Modules: ``crc`` (CRC-16/CCITT-FALSE, CRC-16/MODBUS), ``onecard_v1`` (the
framed protocol's pure codec), ``modbus_rtu`` (the Modbus RTU register map and framing, a pure
codec too), ``simboard`` (the simulated firmware's logic), ``simboard_modbus`` (the same
firmware serving the Modbus register map), ``simulator`` (``onecard board-sim``: the board on
a pty or serial device). Standard library only; nothing else of the project is imported.
"""
