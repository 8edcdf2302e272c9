"""The `tcg` engine: guest code on unicorn (QEMU's TCG as a library), exceptions delivered in C."""
