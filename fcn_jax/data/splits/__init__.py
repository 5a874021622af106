"""Split lists shipped as package data (see PROVENANCE.md)."""
