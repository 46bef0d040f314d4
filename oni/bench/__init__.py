"""Benchmarks of the message layer (``oniwm bench transport``); not imported by ``oni`` itself."""
