"""The in-sandbox runtime shim. Standard library only: it runs inside function instances."""
