"""tokenizers of digit_bench."""
