"""Performance benchmarks of cosmoinfer: ``python -m benchmarks.run [--quick] [--only NAME ...]``."""
