"""The real engines (opa, regal, gator), found and run; `check` and `test` on top of them."""
