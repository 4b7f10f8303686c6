# Model comparison (Zhou et al. 2025): UMAP projection, simulation classifier (trained
# on the simulations only, calibrated on held-out simulations), posterior model
# probabilities of the observed galaxies, and misspecification diagnostics.
# Logic: src/simobs/comparison and src/simobs/misspecification.

TARGETS.extend(
    [
        "results/projection/umap.csv",
        "results/classifier/metrics.json",
        "results/model_posterior/aggregate.csv",
        "results/misspecification/summary.csv",
    ]
)


rule project:
    input:
        embeddings=expand("results/embeddings/{source}.h5", source=SOURCES),
        embedding_runs=expand("results/embeddings/{source}.run_id", source=SOURCES),
    output:
        table="results/projection/umap.csv",
        figure_all=report(
            "results/projection/umap_all.png",
            caption="../report/umap_all.rst",
            category="2. Comparison",
            subcategory="UMAP projection",
        ),
        figure_panels=report(
            "results/projection/umap_panels.png",
            caption="../report/umap_panels.rst",
            category="2. Comparison",
            subcategory="UMAP projection",
        ),
        run_id="results/projection/project.run_id",
    log:
        "results/logs/project.log",
    benchmark:
        "results/benchmarks/project.tsv"
    params:
        settings=config["projection"],
        # study seed + the stage's offset: stages draw different random streams
        seed=config["seed"] + config["projection"]["seed"],
    threads: 1  # a seeded UMAP runs single-threaded (bit-identical reruns)
    # a leaf (figures, the summary): it fills gaps instead of holding the OOD chain back
    # (ahead of ood_scores it delayed misspecification by its 98 s in a measured demo)
    priority: 0
    resources:
        mem_mb=16000,
        runtime=120,
    conda:
        CPU_ENV
    script:
        "../scripts/project.py"


rule train_classifier:
    input:
        embeddings=expand("results/embeddings/{source}.h5", source=SIMULATIONS),
        embedding_runs=expand("results/embeddings/{source}.run_id", source=SIMULATIONS),
        # the VAE decodes traversals of the latents the classifier uses most
        embedding_model="results/embedding/model.pt",
    output:
        model="results/classifier/classifier.json",
        predictions="results/classifier/heldout_predictions.csv",
        metrics="results/classifier/metrics.json",
        shap="results/classifier/shap_top_latents.csv",
        reliability=report(
            "results/classifier/reliability.png",
            caption="../report/reliability.rst",
            category="2. Comparison",
            subcategory="Simulation classifier",
        ),
        confusion=report(
            "results/classifier/confusion.png",
            caption="../report/confusion.rst",
            category="2. Comparison",
            subcategory="Simulation classifier",
        ),
        shap_figure=report(
            "results/classifier/shap_importance.png",
            caption="../report/shap_importance.rst",
            category="2. Comparison",
            subcategory="Simulation classifier",
        ),
        traversals=report(
            "results/classifier/latent_traversals.png",
            caption="../report/classifier_traversals.rst",
            category="2. Comparison",
            subcategory="Simulation classifier",
        ),
        run_id="results/classifier/train_classifier.run_id",
    log:
        "results/logs/train_classifier.log",
    benchmark:
        "results/benchmarks/train_classifier.tsv"
    params:
        settings=config["classifier"],
        seed=config["seed"] + config["classifier"]["seed"],
    threads: 4
    priority: PRIORITY_IMAGES
    resources:
        mem_mb=16000,
        runtime=240,
    conda:
        CPU_ENV
    script:
        "../scripts/train_classifier.py"


rule classifier_replicates:
    input:
        embeddings=expand("results/embeddings/{source}.h5", source=SIMULATIONS),
        embedding_runs=expand("results/embeddings/{source}.run_id", source=SIMULATIONS),
        classifier="results/classifier/classifier.json",
        predictions="results/classifier/heldout_predictions.csv",
        classifier_run="results/classifier/train_classifier.run_id",
    output:
        # the classifier's training variance: model_posterior widens its intervals with it
        replicates="results/classifier/replicates.json",
        heldout_logits="results/classifier/replicate_heldout_logits.csv",
        table="results/classifier/replicates.csv",
        run_id="results/classifier/classifier_replicates.run_id",
    log:
        "results/logs/classifier_replicates.log",
    benchmark:
        "results/benchmarks/classifier_replicates.tsv"
    params:
        settings=config["classifier"],
        seed=config["seed"] + config["classifier"]["seed"],
    threads: 4
    priority: PRIORITY_IMAGES
    resources:
        mem_mb=16000,
        runtime=240,
    conda:
        CPU_ENV
    script:
        "../scripts/classifier_replicates.py"


rule ood_scores:
    input:
        # the simulations' embeddings are the reference of the OOD check
        embeddings=expand("results/embeddings/{source}.h5", source=SOURCES),
        embedding_runs=expand("results/embeddings/{source}.run_id", source=SOURCES),
        classifier="results/classifier/classifier.json",
        predictions="results/classifier/heldout_predictions.csv",
        classifier_run="results/classifier/train_classifier.run_id",
    output:
        # one scoring of every image, read by model_posterior and misspecification alike
        scores="results/ood/scores.csv",
        thresholds="results/ood/thresholds.csv",
        run_id="results/ood/ood_scores.run_id",
    log:
        "results/logs/ood_scores.log",
    benchmark:
        "results/benchmarks/ood_scores.tsv"
    params:
        settings=config["misspecification"]["ood"],
        seed=config["seed"] + config["misspecification"]["seed"],
    threads: 2
    priority: PRIORITY_IMAGES
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        CPU_ENV
    script:
        "../scripts/ood_scores.py"


rule model_posterior:
    input:
        embeddings=expand("results/embeddings/{source}.h5", source=OBSERVATIONS),
        embedding_runs=expand("results/embeddings/{source}.run_id", source=OBSERVATIONS),
        classifier="results/classifier/classifier.json",
        classifier_run="results/classifier/train_classifier.run_id",
        # held-out simulated galaxies: the synthetic surveys of the survey-level calibration
        predictions="results/classifier/heldout_predictions.csv",
        ood_scores="results/ood/scores.csv",
        ood_thresholds="results/ood/thresholds.csv",
        ood_run="results/ood/ood_scores.run_id",
        replicates="results/classifier/replicates.json",
        replicate_heldout_logits="results/classifier/replicate_heldout_logits.csv",
        replicates_run="results/classifier/classifier_replicates.run_id",
    output:
        per_galaxy="results/model_posterior/per_galaxy.csv",
        survey_calibration="results/model_posterior/survey_calibration.csv",
        aggregate="results/model_posterior/aggregate.csv",
        bayes_factors="results/model_posterior/bayes_factors.csv",
        figure_bars=report(
            "results/model_posterior/posterior.png",
            caption="../report/posterior.rst",
            category="2. Comparison",
            subcategory="Posterior model probabilities",
        ),
        figure_per_galaxy=report(
            "results/model_posterior/per_galaxy.png",
            caption="../report/per_galaxy.rst",
            category="2. Comparison",
            subcategory="Posterior model probabilities",
        ),
        run_id="results/model_posterior/model_posterior.run_id",
    log:
        "results/logs/model_posterior.log",
    params:
        settings=config["model_posterior"],
        # which score decides the galaxies that count: the misspecification stage's
        ood=config["misspecification"]["ood"],
        seed=config["seed"] + config["model_posterior"]["seed"],
    threads: 1
    priority: PRIORITY_IMAGES
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        CPU_ENV
    script:
        "../scripts/model_posterior.py"


rule misspecification:
    input:
        embeddings=expand("results/embeddings/{source}.h5", source=SOURCES),
        embedding_runs=expand("results/embeddings/{source}.run_id", source=SOURCES),
        datasets=expand("results/datasets/{source}.h5", source=SOURCES),
        ood_scores="results/ood/scores.csv",
        ood_thresholds="results/ood/thresholds.csv",
        ood_run="results/ood/ood_scores.run_id",
    output:
        scores="results/misspecification/scores.csv",
        summary="results/misspecification/summary.csv",
        mmd="results/misspecification/mmd_tests.csv",
        verdict="results/misspecification/verdict.json",
        figure_energy=report(
            "results/misspecification/energy.png",
            caption="../report/energy.rst",
            category="2. Comparison",
            subcategory="Misspecification",
        ),
        figure_max_softmax=report(
            "results/misspecification/max_softmax.png",
            caption="../report/max_softmax.rst",
            category="2. Comparison",
            subcategory="Misspecification",
        ),
        figure_typicality=report(
            "results/misspecification/typicality.png",
            caption="../report/typicality.rst",
            category="2. Comparison",
            subcategory="Misspecification",
        ),
        figure_mmd=report(
            "results/misspecification/mmd.png",
            caption="../report/mmd.rst",
            category="2. Comparison",
            subcategory="Misspecification",
        ),
        gallery_observed=report(
            "results/misspecification/gallery_observed.png",
            caption="../report/gallery_observed.rst",
            category="2. Comparison",
            subcategory="Misspecification",
        ),
        gallery_simulated=report(
            "results/misspecification/gallery_simulated.png",
            caption="../report/gallery_simulated.rst",
            category="2. Comparison",
            subcategory="Misspecification",
        ),
        run_id="results/misspecification/misspecification.run_id",
    log:
        "results/logs/misspecification.log",
    benchmark:
        "results/benchmarks/misspecification.tsv"
    params:
        settings=config["misspecification"],
        seed=config["seed"] + config["misspecification"]["seed"],
        sources=list(SOURCES),
    threads: 2
    priority: PRIORITY_IMAGES
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        CPU_ENV
    script:
        "../scripts/misspecification.py"
