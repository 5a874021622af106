"""The package docstring is the code map: every module has its line."""

import pkgutil
import re

import fcn_jax
from fcn_jax import data


def _modules(package):
  return [m.name for m in pkgutil.iter_modules(package.__path__)
          if not m.ispkg]


def test_every_module_has_a_line_in_the_code_map():
  doc = fcn_jax.__doc__
  missing = [m for m in _modules(fcn_jax)
             if not re.search(rf'^\s+{m}\s', doc, re.M)]
  assert not missing, f'modules missing from fcn_jax/__init__.py: {missing}'


def test_every_mapped_module_exists():
  doc = fcn_jax.__doc__
  mapped = re.findall(r'^  ([a-z_]+)\s{2,}', doc, re.M)
  assert mapped and set(mapped) <= set(_modules(fcn_jax))


def test_data_modules_are_named_under_data():
  doc = fcn_jax.__doc__
  data_lines = doc.split('  data/', 1)[1].split('\n\n', 1)[0]
  missing = [m for m in _modules(data) if m not in data_lines]
  assert not missing, f'data modules missing from the code map: {missing}'
