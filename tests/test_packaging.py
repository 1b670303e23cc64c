"""pyproject.toml (pip install -e .) and the pinned requirement files (the quickstart's) list the same dependencies."""

import os
import tomllib

import setuptools

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _requirements(name):
  with open(os.path.join(REPO, name)) as f:
    lines = [line.split('#')[0].strip() for line in f]
  return {line for line in lines if line and not line.startswith('-r')}


def test_pyproject_has_the_requirement_files_dependencies_and_every_package():
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    pyproject = tomllib.load(f)
  project = pyproject['project']
  assert set(project['dependencies']) == _requirements('requirements.txt')
  assert set(project['optional-dependencies']['test']) == _requirements('requirements-test.txt')
  assert project['requires-python'] == '>=3.11'
  found = setuptools.find_packages(REPO, **pyproject['tool']['setuptools']['packages']['find'])
  assert {'layered_jax', 'layered_jax.models', 'configs', 'data_prep'} <= set(found), found
