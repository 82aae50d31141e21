"""MAE reproduction harness."""
