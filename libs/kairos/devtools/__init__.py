"""Developer tooling: code generation and checks run from the Makefile and the tests."""
