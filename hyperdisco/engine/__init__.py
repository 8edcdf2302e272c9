"""CPU engines: run guest code for one vCPU behind the interface in `base`; the core never imports them."""
