"""Test support that ships with the operator: the Kubernetes API emulator used by the tests and the demo."""
