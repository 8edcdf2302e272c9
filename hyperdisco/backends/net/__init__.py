"""Domain 0's side of the virtual network: the frame format on a vif's socket, the switch of each named
network, the uplink to the host (passt), and the toolstack's vif devices (xenstore nodes, attach/detach).
The netback that speaks to a guest's netfront runs in the domain's own process (backends/netback/)."""
