# The two commands of the README: `make demo` and `make test`.
# Each creates .venv with python3 (3.11+) and installs what it needs from
# this project's own files.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test demo lint docs settings-doc messages screenshots providers-doc clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The MariaDB driver (mysqlclient) compiles against a client library that
# pkg-config must find (Debian: libmariadb-dev pkg-config); without one the
# MariaDB tests are skipped with that reason (and fail under CI=true).
$(VENV)/.test-installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@if pkg-config --exists libmariadb 2>/dev/null || pkg-config --exists mysqlclient 2>/dev/null; then \
		$(BIN)/python -m pip install --quiet -e ".[mariadb]"; \
	else \
		echo "pkg-config finds no MariaDB client library (Debian: apt-get install libmariadb-dev pkg-config): mysqlclient not installed, the MariaDB tests will be skipped"; \
	fi
	touch $@

$(VENV)/.demo-installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[demo]"
	touch $@

# The suite on TEST_WORKERS processes (pytest-xdist; loadgroup keeps the tests of an
# xdist_group mark on one worker, and tests/conftest.py hands the slowest out first);
# TEST_WORKERS=0 runs it in this process.
# One file: .venv/bin/python -m pytest tests/test_client.py
TEST_WORKERS ?= 3
test: $(VENV)/.test-installed
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

demo: $(VENV)/.demo-installed
	$(BIN)/python example_project/run_demo.py

lint: $(VENV)/.test-installed
	$(BIN)/python -m pip install --quiet -e ".[lint]"
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy django_token_rotation tests benchmarks

docs: $(VENV)/.test-installed
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	$(BIN)/python -m sphinx -W --keep-going -b html -q docs docs/_build/html

# docs/settings.rst from the docstrings of django_token_rotation/conf.py (tests/test_docs.py
# fails while the page is not current).
settings-doc: $(VENV)/.test-installed
	$(BIN)/python -c "from django_token_rotation.conf import settings_reference as r; \
	open('docs/settings.rst', 'w').write(r())"

# The translations (django_token_rotation/locale/): catalogues updated from the source, then
# compiled (GNU gettext: apt-get install gettext). No source locations, so that moving code
# does not change them; -P: the package's http.py must not shadow the standard library's.
LANGUAGES := de es fr ja pt_BR
messages: $(VENV)/.test-installed
	cd django_token_rotation && DJANGO_SETTINGS_MODULE=tests.settings PYTHONPATH=.. \
	../$(BIN)/python -P -m django makemessages --no-location --no-obsolete $(LANGUAGES:%=--locale=%) && \
	DJANGO_SETTINGS_MODULE=tests.settings PYTHONPATH=.. ../$(BIN)/python -P -m django compilemessages

# The pictures of the manual (docs/admin-*.png, docs/demo-*.png), taken at 1280 px by the
# browser tests (Debian's chromium through Playwright).
screenshots: $(VENV)/.test-installed
	TOKEN_ROTATION_UPDATE_SCREENSHOT=1 $(BIN)/python -m pytest -q tests/test_admin_browser.py tests/test_demo_browser.py

# The generated tables of docs/providers.rst, from the provider registry.
providers-doc: $(VENV)/.test-installed
	DJANGO_SETTINGS_MODULE=tests.settings $(BIN)/python -c 'import sys, django; django.setup(); \
	from django_token_rotation.providers.docs import main; sys.exit(main(["docs/providers.rst"]))'

clean:
	rm -rf $(VENV) docs/_build .nox .pytest_cache .mypy_cache .ruff_cache *.egg-info
