# shellcheck shell=bash
# Shared settings of the paper's experiments, sourced by the scripts in examples/math and examples/vl.
#
# Every script builds the Hydra overrides of one setting, then `agrae_example_launch` either runs
#   verl-agrae train --config-name METHOD_CONFIG OVERRIDES... EXTRA_ARGS...
# here (LAUNCHER=local, default), submits it with slurm/train.sbatch (LAUNCHER=slurm), or, with DRY_RUN=1,
# prints the command and the composed config (checked by verl's validate_config) without launching.
# DRY_RUN=command prints the command only.
#
# Variables: MODEL (HF id or local dir), DATA_DIR (default: <repo>/data, filled by examples/prepare_data.sh),
# NNODES (1), GPUS_PER_NODE (8), EXP (experiment name), PYTHON (for DRY_RUN), SBATCH_ARGS (LAUNCHER=slurm),
# SETTINGS (ours, default; or authors: the A-GRAE authors' released settings where they are settings rather than
# defects, see docs/settings.md; reads the data prepared with SETTINGS=authors under $DATA_DIR/authors).

AGRAE_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA_DIR=${DATA_DIR:-$AGRAE_REPO/data}
NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
SETTINGS=${SETTINGS:-ours}
case $SETTINGS in
    ours) ;;
    # The authors' prompts carry a system message: their data is prepared apart (examples/prepare_data.sh).
    authors) DATA_DIR=$DATA_DIR/authors ;;
    *)
        echo "SETTINGS must be ours or authors, got '$SETTINGS'" >&2
        exit 2
        ;;
esac

# Validation sets of the math scripts (verl validates on each and reports each by data source). Ours: MATH-500,
# AIME 2024, AIME 2025, AMC 2023. The authors validated on MATH test, AIME and AMC.
agrae_math_val_files() {
    if [[ $SETTINGS == authors ]]; then
        echo "[$DATA_DIR/math/test.parquet,$DATA_DIR/aime2024/test.parquet,$DATA_DIR/aime2025/test.parquet,$DATA_DIR/amc23/test.parquet]"
    else
        echo "[$DATA_DIR/math500/test.parquet,$DATA_DIR/aime2024/test.parquet,$DATA_DIR/aime2025/test.parquet,$DATA_DIR/amc23/test.parquet]"
    fi
}

# The paper's training recipe (arXiv 2602.05548): 1024 prompts x 8 rollouts per step, lr 1e-6, responses up
# to 3072 tokens, 20 epochs. Micro-batching, offloading and vLLM memory are our choices for 8 x 80 GB GPUs.
# Args: model path, tensor parallel size, train files, val files, and optionally prompts per step (1024),
# max prompt length (1024), max response length (3072), PPO mini-batch (256).
agrae_paper_overrides() {
    local model=$1 tp=$2 train=$3 val=$4 batch=${5:-1024} max_prompt=${6:-1024} max_resp=${7:-3072} mini=${8:-256}
    AGRAE_OVERRIDES=(
        "data.train_files=$train"
        "data.val_files=$val"
        "data.train_batch_size=$batch"
        "data.max_prompt_length=$max_prompt"
        "data.max_response_length=$max_resp"
        data.filter_overlong_prompts=True
        data.truncation=error
        "actor_rollout_ref.model.path=$model"
        actor_rollout_ref.model.use_remove_padding=True
        actor_rollout_ref.model.enable_gradient_checkpointing=True
        actor_rollout_ref.actor.optim.lr=1e-6
        "actor_rollout_ref.actor.ppo_mini_batch_size=$mini"
        actor_rollout_ref.actor.use_dynamic_bsz=True
        actor_rollout_ref.actor.ppo_max_token_len_per_gpu=16384
        actor_rollout_ref.ref.log_prob_use_dynamic_bsz=True
        actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=32768
        actor_rollout_ref.ref.fsdp_config.param_offload=True
        actor_rollout_ref.rollout.name=vllm
        actor_rollout_ref.rollout.n=8
        actor_rollout_ref.rollout.temperature=1.0
        "actor_rollout_ref.rollout.tensor_model_parallel_size=$tp"
        actor_rollout_ref.rollout.gpu_memory_utilization=0.6
        actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True
        actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=32768
        actor_rollout_ref.rollout.val_kwargs.do_sample=True
        actor_rollout_ref.rollout.val_kwargs.temperature=0.6
        actor_rollout_ref.rollout.val_kwargs.top_p=0.95
        actor_rollout_ref.rollout.val_kwargs.n=1
        trainer.total_epochs=20
        # A checkpoint every 5 steps (about an hour at 7B on 8 GPUs): a crash loses at most that; a requeue at the
        # time limit loses at most the step in progress (slurm/train.sbatch saves first). Two kept: with optimizer
        # state each is ~100 GB at 7B, and the older one covers a save cut short.
        trainer.save_freq=5
        trainer.max_actor_ckpt_to_keep=2
        trainer.max_critic_ckpt_to_keep=2
        trainer.test_freq=10
        trainer.project_name=verl_agrae_paper
    )
}

# Select one method's packaged config (AGRAE_CONFIG) and add its A-GRAE alpha. Args: method (grpo, grpo+agrae,
# drgrpo, drgrpo+agrae, dapo, dapo+agrae), A-GRAE alpha.
agrae_method_overrides() {
    # The semantics (Dr.GRPO without std normalisation, full DAPO, DAPO + A-GRAE's success threshold) live in
    # the packaged config of the same name, verl_agrae/trainer/config/{grpo,drgrpo,dapo}[_agrae].yaml.
    local method=$1 alpha=$2
    AGRAE_CONFIG=${method/+/_}
    if [[ "$method" == *+agrae ]]; then
        AGRAE_OVERRIDES+=("algorithm.agrae.alpha=$alpha")
    fi
    agrae_settings_overrides "$method"
}

# SETTINGS=authors: the authors' released settings that are choices, not defects (docs/settings.md). What they
# got wrong stays fixed: A-GRAE runs, Dr.GRPO has no std normalisation, DAPO has dynamic sampling and overlong
# shaping, no KL in the reward. Arg: method.
agrae_settings_overrides() {
    local method=$1
    [[ $SETTINGS == authors ]] || return 0
    AGRAE_OVERRIDES+=(actor_rollout_ref.actor.entropy_coeff=0.001 trainer.test_freq=7)
    if [[ "$method" == grpo* ]]; then
        # KL loss on with coefficient 0: no effect on the update, but the reference pass runs, as theirs did.
        AGRAE_OVERRIDES+=(actor_rollout_ref.actor.use_kl_loss=True actor_rollout_ref.actor.kl_loss_coef=0.0)
    fi
}

# Geometry3K's reward in the authors' runs (which their alpha = 0.5 went with): 0.9 accuracy + 0.1 format.
agrae_geometry3k_reward_overrides() {
    [[ $SETTINGS == authors ]] || return 0
    AGRAE_OVERRIDES+=(
        reward.custom_reward_function.path=pkg://verl_agrae.reward.format_reward
        reward.custom_reward_function.name=accuracy_and_format_score
        +reward.custom_reward_function.reward_kwargs.format_weight=0.1
    )
}

agrae_example_launch() {
    local exp=${EXP:-$1}
    shift
    local -a cmd
    case ${LAUNCHER:-local} in
        local)
            cmd=(verl-agrae train --config-name "$AGRAE_CONFIG" "${AGRAE_OVERRIDES[@]}"
                "trainer.nnodes=$NNODES" "trainer.n_gpus_per_node=$GPUS_PER_NODE"
                "trainer.experiment_name=$exp" "$@")
            ;;
        slurm)
            local -a sbatch_args=()
            read -r -a sbatch_args <<<"${SBATCH_ARGS:-}"
            # train.sbatch adds trainer.nnodes / n_gpus_per_node from the allocation and run.dir per job name.
            cmd=(sbatch "--nodes=$NNODES" "--gpus-per-node=$GPUS_PER_NODE" "--job-name=$exp" "${sbatch_args[@]}"
                "$AGRAE_REPO/slurm/train.sbatch" "$AGRAE_CONFIG" "${AGRAE_OVERRIDES[@]}" "trainer.experiment_name=$exp" "$@")
            ;;
        *)
            echo "LAUNCHER must be local or slurm, got '${LAUNCHER}'" >&2
            return 2
            ;;
    esac
    if [[ -n "${DRY_RUN:-}" && "${DRY_RUN}" != 0 ]]; then
        printf 'command:'
        printf ' %q' "${cmd[@]}"
        printf '\n'
        [[ "$DRY_RUN" == command ]] && return 0
        # Compose what verl-agrae train would (with the trainer.* keys the SLURM job adds).
        "${PYTHON:-python}" "$AGRAE_REPO/examples/compose_config.py" --config-name "$AGRAE_CONFIG" -- \
            "${AGRAE_OVERRIDES[@]}" "trainer.nnodes=$NNODES" "trainer.n_gpus_per_node=$GPUS_PER_NODE" \
            "trainer.experiment_name=$exp" "$@"
        return
    fi
    exec "${cmd[@]}"
}

# Methods accepted by the training scripts.
AGRAE_METHODS="grpo grpo+agrae drgrpo drgrpo+agrae dapo dapo+agrae"

agrae_usage() {
    echo "usage: $1 METHOD [HYDRA_OVERRIDES...]   METHOD: ${AGRAE_METHODS// /, }" >&2
    echo "       DRY_RUN=1 $1 METHOD    print the command and the composed config, launch nothing" >&2
}

# Check a training script's METHOD argument: usage and exit status 2 unless it is one of AGRAE_METHODS.
agrae_require_method() {
    local script=$1 method=${2:-}
    [[ " $AGRAE_METHODS " == *" $method "* ]] && return 0
    agrae_usage "$script"
    exit 2
}
