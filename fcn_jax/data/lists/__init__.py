"""Class names and split lists of NYUDv2, SIFT Flow and PASCAL-Context,
shipped as package data (see PROVENANCE.md)."""

from __future__ import annotations

import importlib.resources

from fcn_jax.data import decode

LISTS_PACKAGE = 'fcn_jax.data.lists'


def read_lines(name: str) -> list[str]:
  """The non-blank lines of a shipped list, e.g. 'nyud_train.txt'."""
  resource = importlib.resources.files(LISTS_PACKAGE) / name
  if not resource.is_file():
    raise decode.DataError(f'No packaged list {name!r} in {LISTS_PACKAGE}.')
  return [line.strip() for line in resource.read_text().splitlines()
          if line.strip()]
