"""The statistical benchmark ("the physical limit"): networks against the exact GRF posterior.

One command runs every stage as the real console script in a subprocess (as a user would),
computes the figures and writes them to ``benchmarks/results/physical_limit.json`` (shaped
``{experiment: {parameter: {metric: value}}}``) and to the section "## Physical limit (statistical
benchmark)" of ``benchmarks/RESULTS.md``, with the run record (each part's date and scale, training
times, the cross-suite report verdicts) beside the JSON in ``physical_limit_info.json``::

    python -m pipelines.physical_limit [--scale quick|reduced|full] [--only grf|camels|cross|sweep]
                                       [--out runs/physical_limit] [--jobs 2] [--threads 1]

Parts (``--only`` picks one; default: all):

* ``grf``: the ``grf_fisher`` experiment (Omega_m, sigma_8 from 64^2 GRF maps of the 25 Mpc/h box,
  LH priors; 19 200 training / 8 100 test maps at ``reduced``, 42 240 / 17 820 at ``full``): the
  default CMD CNN (ensemble member 0, capped at ``trainer.max_time``), further ensemble members, and the
  power-spectrum baseline (``model=ps_mlp``), evaluated on val and test; evaluate adds the exact
  posterior of every map (``exact_mean``, ``exact_std``, ``exact_log_prob``, ``exact_hpd`` ...:
  :func:`cosmoinfer.simulators.grf_exact_datasets.extra_datasets`). The CNNs are evaluated with test-time
  augmentation (``tta=true``: the mean and variance averaged over the 8 rotations/flips of each map,
  under which the GRF likelihood is invariant) and member 0 also without it (``grf_fisher_no_tta``).
  Per parameter (the definitions of :mod:`cosmoinfer.calibration.exact`, shared with the report):

  - ``efficiency`` = MSE(exact posterior mean) / MSE(network mean) (1 = the physical limit);
  - ``std_ratio_median`` = median of network std / exact posterior std;
  - ``mean_shift`` = RMS over maps of (network mean - exact mean) / exact std (until 2026-12 this
    was RMS(network mean - exact mean) / mean exact std, which weights the wide posteriors);
  - ``coverage_error`` (max |empirical - nominal| over the levels 0.05 ... 0.95) of the Gaussian
    intervals, before and after variance scaling (``coverage_error_recalibrated``) and isotonic
    recalibration (``coverage_error_isotonic``), judged on test and fitted on the calibration set:
    every map of ``calib_sims`` fresh simulations (seed 1, 60 000 maps at ``full``), which each
    model evaluates like test (``split=all data.root=.../calib_data``). The val split (5 940 maps)
    is too small a fit set: its noise alone moved the isotonic figure to 0.024;
  - ``rmse``, ``exact_rmse``, ``train_minutes`` (wall clock of the training process);
  - the same for the baseline, prefixed ``baseline_`` (``baseline_rmse`` ...).

  Joint figures of the whole predictive sit under the pseudo-parameter ``joint`` of each
  experiment (``cosmoinfer.calibration.compute_metrics``' ``joint`` block, from the stored
  predictive): ``expected_kl`` (mean over test maps of log p_exact(theta_true|x) - log q(theta_true|x),
  nats) with its 95% bootstrap interval over simulations ``expected_kl_lo`` / ``_hi``,
  ``hpd_coverage_error`` (max |empirical - nominal| coverage of the highest-density regions over the
  levels 0.05 ... 0.95) and the joint ``nll``; the baseline's prefixed ``baseline_``, and the exact
  posterior's own ``exact_hpd_coverage_error`` and ``exact_nll`` (its expected KL is 0).

* ``camels``: ``camels_like_mtot`` (CNN vs power-spectrum baseline on Mtot maps), and
  ``camels_like_multifield`` (Mtot, Mgas, T, Mstar as channels, inferring Omega_m, sigma_8, A_SN1,
  A_AGN1) against CNNs on each single field with the same parameters (``camels_like_single_<F>``).
* ``cross``: the camels models trained on SynthTNG (Mtot CNN and baseline, the Mgas CNN, the
  multifield CNN and baseline), evaluated on every SynthSIMBA map (``cosmoinfer-evaluate ...
  data.suite=SynthSIMBA data.root=... split=all``); recalibration fitted on the SynthTNG validation
  set; the report's verdicts go to RESULTS.md. Mtot hardly depends on the feedback; the gas fields
  do, through mappings that differ between the suites, so they are the sharper test.
* ``sweep``: CNN vs baseline on Mtot maps for several ``simulator.lognormal_amplitude`` values
  (more non-Gaussian matter: the CNN's advantage should grow).

Every CNN is evaluated with test-time augmentation (``TTA``; a power spectrum binned in |k| is
invariant under the 8 rotations/flips already, so the baselines need none). CNN gains over the
baseline come with a 95% bootstrap interval over the test simulations (``rmse_gain_lo``/``_hi``).

Every stage is a :class:`cosmoinfer.stages.Stage` run by the package's one stage runner (the
runner of ``cosmoinfer-pipeline``): a stage is reused only when its record (``.stage.json`` in its
folder) says it finished under the same composed configuration and the same inputs; otherwise it
is redone with everything downstream, and the terminal says why. So a rerun redoes only what
changed or is missing, and ``--only`` parts can be run one after the other (a second run into the
same ``--out`` while one is running stops at once, naming it). ``--jobs`` independent stages run at
once, each with ``--threads`` torch/BLAS threads (on a 2-core machine: 2 jobs x 1 thread); a failed
stage is recorded (``failed_by_run`` in the run record) and only its dependents are skipped.
``--scale`` picks ``conf/benchmark/physical_limit/<scale>.yaml``; ``quick`` is a tiny smoke run (it
writes its JSON and table into ``--out``, not into ``benchmarks/``). Statistical targets are
measured here, never asserted in unit tests.

Modules: :mod:`.scales` (the scale configs), :mod:`.tasks` (the stages), :mod:`.figures` (the
statistics, from :mod:`cosmoinfer.calibration`), :mod:`.summaries` (figures per part, the JSON),
:mod:`.tables` (the RESULTS.md section), ``__main__`` (the command).
"""

from pipelines.physical_limit.figures import (
    bootstrap_gain,
    calibration_figures,
    exact_figures,
    exact_reference,
    interval_figures,
    isotonic_error_interval,
    joint_figures,
    kl_gain,
)
from pipelines.physical_limit.scales import REPO, SCALES, scale_config
from pipelines.physical_limit.summaries import (
    GRF_JOINT,
    GRF_METRICS,
    cross_report,
    done_seconds,
    summarise_camels,
    summarise_cross,
    summarise_grf,
    summarise_heads,
    summarise_sweep,
    train_info,
    write_json,
)
from pipelines.physical_limit.tables import (
    SECTION,
    TARGETS,
    cnn_ps_table,
    cross_table,
    grf_joint_table,
    grf_table,
    heads_table,
    multifield_table,
    old_notes,
    render_section,
    sweep_table,
    update_results_md,
)
from pipelines.physical_limit.tasks import (
    CROSS,
    CROSS_MODELS,
    MULTI_FIELDS,
    PARTS,
    QUIET,
    TTA,
    all_tasks,
    camels_tasks,
    cross_tasks,
    eval_task,
    grf_tasks,
    heads_tasks,
    ps_overrides,
    simulate_task,
    sweep_tasks,
    train_task,
)

__all__ = [
    "CROSS", "CROSS_MODELS", "GRF_JOINT", "GRF_METRICS", "MULTI_FIELDS", "PARTS", "QUIET", "REPO",
    "SCALES", "SECTION", "TARGETS", "TTA", "all_tasks", "bootstrap_gain", "calibration_figures",
    "camels_tasks", "cnn_ps_table", "cross_report", "cross_table", "cross_tasks", "done_seconds", "eval_task",
    "exact_figures", "exact_reference", "grf_joint_table", "grf_table", "grf_tasks", "interval_figures", "heads_table", "heads_tasks", "summarise_heads",
    "isotonic_error_interval", "joint_figures", "kl_gain",
    "multifield_table", "old_notes", "ps_overrides", "render_section", "scale_config", "simulate_task",
    "summarise_camels", "summarise_cross", "summarise_grf", "summarise_sweep", "sweep_table", "sweep_tasks",
    "train_info", "train_task", "update_results_md", "write_json",
]
