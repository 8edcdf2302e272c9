"""The Xen guest ABI as hyperdisco implements it: numbers and structure layouts from Xen's public headers."""
