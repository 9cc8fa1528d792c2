"""Every shipped guideline's own test cases, one pytest test each."""
