# Set-up and entry points. `make test` and `make demo` work on a fresh machine: they create .venv,
# install the project (CPU torch pinned in constraints.txt) and run.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip install -q -c constraints.txt

.PHONY: install test demo screenshots lint bench starter-weights xvfb clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	touch $(STAMP)

# Xvfb and the xcb libraries Qt needs, for GUI tests and the headless demo (Debian/Ubuntu, as root).
xvfb:
	@command -v Xvfb >/dev/null 2>&1 || { \
	  apt-get update -q && apt-get install -y -q xvfb libxcb-icccm4 libxcb-keysyms1 \
	    libxcb-xinerama0 libxcb-cursor0 libxkbcommon-x11-0 libxcb-image0 libxcb-render-util0 \
	    libxcb-shape0 libgl1 libegl1 libfontconfig1 libdbus-1-3; }

test: $(STAMP) xvfb
	$(VENV)/bin/ruff check medvae_engine napari_medvae tests scripts
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

demo: $(STAMP) xvfb
	$(PY) -m napari_medvae.demo --out demo_out

# The README's screenshots (docs/images), made by the real plugin in a virtual X server.
screenshots: $(STAMP) xvfb
	$(PY) -m napari_medvae.screenshots docs/images

lint: $(STAMP)
	$(VENV)/bin/ruff check medvae_engine napari_medvae tests scripts
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(VENV)/bin/medvae bench speed

# Re-create the shipped starter weights with the project's own training pipeline (CPU, resumable:
# rerun after an interruption and each run continues from its last checkpoint), then install them
# in the package and write docs/model_cards/. Two runs at a time, one core each. Chains (each link
# starts from the previous run's model.safetensors): starter_4_1_2d_radiograph -> starter_4_1_2d
# and starter_4_3_2d_radiograph -> starter_4_3_2d (interpolation shortcut); starter_4_1_2d_v1 ->
# starter_4_1_3d_v1 (inflated) -> starter_4_1_3d_shortcut -> starter_4_1_3d_l2 (squared error) ->
# starter_4_1_3d_refiner (learned latent refiner) -> starter_4_1_3d (all three fine-tuned
# together); the SR model last, in starter_4_3_2d's latents.
MEDVAE := $(VENV)/bin/medvae
train_or_resume = $(MEDVAE) $(2) medvae_engine/configs/$(1).yaml -o runs/$(1) \
	$$(test -f runs/$(1)/checkpoint.pt && echo --resume)
two_runs = OMP_NUM_THREADS=1 $(call train_or_resume,$(1),train) & a=$$!; \
	OMP_NUM_THREADS=1 $(call train_or_resume,$(2),train) & b=$$!; \
	wait $$a && wait $$b
starter-weights: $(STAMP)
	$(call two_runs,starter_4_1_2d_radiograph,starter_4_1_2d_v1)
	$(call two_runs,starter_4_3_2d_radiograph,starter_4_1_3d_v1)
	$(call two_runs,starter_4_1_2d,starter_4_1_3d_shortcut)
	$(call two_runs,starter_4_3_2d,starter_4_1_3d_l2)
	OMP_NUM_THREADS=1 $(call train_or_resume,starter_4_1_3d_refiner,train)
	OMP_NUM_THREADS=1 $(call train_or_resume,starter_4_1_3d,train)
	$(PY) scripts/install_starter.py runs/starter_4_1_2d starter_4_1_2d
	$(PY) scripts/install_starter.py runs/starter_4_3_2d starter_4_3_2d
	$(PY) scripts/install_starter.py runs/starter_4_1_3d starter_4_1_3d
	$(MEDVAE) bench quality --models starter_4_1_2d starter_4_3_2d starter_4_1_3d
	$(MEDVAE) bench quality --models starter_4_1_3d --images builtin:nibabel/anatomical \
		builtin:dipy/aniso_vox --refine 100 --quality-out docs/model_cards/quality_3d_refine
	OMP_NUM_THREADS=2 $(call train_or_resume,starter_sr_x4,train-sr)
	$(PY) scripts/install_starter.py runs/starter_sr_x4 starter_sr_x4
	$(MEDVAE) bench sr

clean:
	rm -rf demo_out .pytest_cache
