"""stages of digit_bench."""
