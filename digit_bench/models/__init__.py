"""models of digit_bench."""
