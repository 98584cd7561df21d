"""eval of digit_bench."""
