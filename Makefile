# make demo: the virtual hypervisor lab (Debian 13 hosts), a real kexec from 6.12 into 7.3 and QEMU 10.0 -> 11.1 under
# running guests, set-up included.
# make test: every check and test, set-up included. Both work on a fresh Debian 12 or 13.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The oldest ansible-core that meta/runtime.yml claims: sanity, unit tests and the fleet rollout run on it too.
OLDEST := .venv-oldest
OLDEST_BIN := $(OLDEST)/bin
OLDEST_STAMP := $(OLDEST)/.installed
# `make test`, stage by stage, in order, each NAME:TARGET or just TARGET; tools/stage.sh times each.
# The Debian 13 chroot (mostly downloads and apt) and the two VM images (the lab host's and the Linux guest's, built
# once and cached) run beside the lint stages, and are awaited before the first stage that starts VMs: a VM of the
# chroot's fleet would be one more QEMU on the machine for tests that look at every QEMU.
TEST_STAGES_FIRST := lint:checks sanity venv-2.16:venv-oldest sanity-2.16:sanity-oldest
TEST_STAGES_THEN := pytest pytest-2.16:pytest-oldest molecule molecule-kexec

.PHONY: all setup system-packages venv venv-oldest test lint checks ruff mypy sanity sanity-oldest pytest-oldest ansible-lint changelog-lint pytest molecule molecule-kexec demo demo-local bench ee-context clean

all: test

setup: system-packages venv

system-packages:
	tools/install-system-packages.sh

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(STAMP)

$(OLDEST_STAMP): requirements.txt requirements-oldest.txt
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST_BIN)/pip install --quiet --disable-pip-version-check -r requirements-oldest.txt
	touch $@

venv-oldest: $(OLDEST_STAMP)

# Stops at the first failed stage, as before, and prints every stage's time and the wall clock either way; after a
# failure, first what failed (tools/failure_digest.py), as CI keeps only the end of the output.
test:
	@tools/stage.sh reset; start=$$(date +%s); rc=0; bg=; \
	tools/stage.sh run setup $(MAKE) --no-print-directory setup || rc=$$?; \
	if [ $$rc -eq 0 ]; then \
	  mkdir -p build; tools/stage.sh run debian13 $(MAKE) --no-print-directory debian13 >build/debian13.log 2>&1 & bg=$$!; \
	  tools/stage.sh run images $(MAKE) --no-print-directory images >build/images.log 2>&1 & bgi=$$!; \
	  for stage in $(TEST_STAGES_FIRST); do \
	    tools/stage.sh run "$${stage%%:*}" $(MAKE) --no-print-directory $${stage#*:} || { rc=$$?; break; }; \
	  done; \
	  wait $$bg || { drc=$$?; echo "make test: the Debian 13 stage failed; the end of build/debian13.log:"; \
	                 tail -n 60 build/debian13.log; [ $$rc -ne 0 ] || rc=$$drc; }; \
	  wait $$bgi || { drc=$$?; echo "make test: the images stage failed; the end of build/images.log:"; \
	                  tail -n 60 build/images.log; [ $$rc -ne 0 ] || rc=$$drc; }; \
	fi; \
	if [ $$rc -eq 0 ]; then \
	  for stage in $(TEST_STAGES_THEN); do \
	    tools/stage.sh run "$${stage%%:*}" $(MAKE) --no-print-directory $${stage#*:} || { rc=$$?; break; }; \
	  done; \
	fi; \
	echo; [ $$rc -eq 0 ] || tools/stage.sh digest; \
	echo "make test: stage times (debian13 and images ran beside lint to sanity-2.16)"; tools/stage.sh table; \
	wall=$$(( $$(date +%s) - start )); printf 'wall clock       %6d s  %5dm%02ds\n' $$wall $$((wall / 60)) $$((wall % 60)); \
	exit $$rc

lint: checks sanity sanity-oldest

checks: ruff mypy changelog-lint ansible-lint

ruff: venv
	$(BIN)/ruff check .

mypy: venv
	cd .dev-collections && ../$(BIN)/mypy --config-file ../pyproject.toml -p ansible_collections.liveupdate.cpr.plugins

changelog-lint: venv
	$(BIN)/antsibull-changelog lint

ansible-lint: venv
	$(BIN)/python tools/role_docs.py --check
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/ansible-lint --profile production

sanity: venv
	tools/sanity.sh

sanity-oldest: venv-oldest
	VENV_PYTHON=$(OLDEST_BIN)/python tools/sanity.sh

# The unit tests (the filters through real plays among them) and the local-fleet rollout, on the oldest
# ansible-core: run_playbook (tests/conftest.py) takes ansible-playbook from the venv of the pytest that runs it.
pytest-oldest: system-packages venv-oldest
	PATH=$(CURDIR)/$(OLDEST_BIN):$$PATH $(OLDEST_BIN)/pytest tests/unit \
	  tests/integration/test_fleet.py::test_failed_restore_stops_the_rollout_keeps_the_state_and_a_rerun_resumes

# Two workers, each taking whole test files (the files' fixtures are per module); the files marked `alone` then run
# by themselves. --durations: where the stage's time goes, in every log (CI's included).
PYTEST_WORKERS ?= 2
pytest: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not alone" --durations=25
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -m alone --durations=10

# COLUMNS: molecule folds each line of a playbook's output at the terminal's width (80 without one), which splits a
# failed task's JSON result over many lines; unfolded, tools/failure_digest.py can read it back.
MOLECULE := PATH=$(CURDIR)/$(BIN):$$PATH COLUMNS=100000 $(BIN)/molecule

molecule: setup
	$(MOLECULE) test --scenario-name default

# The virtual hypervisor lab's scenario: a real kexec into a newer kernel (the longest stage of `make test`).
molecule-kexec: setup
	$(MOLECULE) test --scenario-name kexec

demo: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m lab.host.demo $(DEMO_ARGS)

# The first demo: a save-and-restore round trip of local VMs, no host lab (seconds, not minutes).
demo-local: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m lab.local_demo

# The lab host image and the Linux guest image, built once and cached under build/cache by their inputs
.PHONY: images
images: setup
	$(BIN)/python -m lab.host.image >/dev/null
	$(BIN)/python -m lab.linux_guest image >/dev/null

# A Debian 13 control node in a chroot (tools/debian13.py): the set-up script's trixie branch, then the local fleet
# rollout on ansible-core 2.21. The chroot is built once (7 to 8 minutes here) and cached under build/cache;
# a run with it cached took 2 to 3.5 minutes.
.PHONY: debian13
debian13: setup
	$(BIN)/python -m tools.debian13

# The execution environment's build context (no container engine needed); then, where podman exists:
#   ansible-builder build --context build/ee --tag IMAGE
ee-context: venv
	$(BIN)/ansible-galaxy collection build --force --output-path build
	$(BIN)/ansible-builder create --file execution-environment.yml --context build/ee --output-filename Containerfile

bench: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/run.py

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
