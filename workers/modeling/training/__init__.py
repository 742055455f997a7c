"""Training with provenance: which samples trained a version, in which order, and DeepObliviate's blocks.

The training set is split into B blocks such that each data subject's samples sit in exactly one block
(subject-aligned: deleting one subject then invalidates only the blocks from its block onwards; with
class-stratified blocks one subject touched ~7 of 10 blocks and a restart saved nothing). Blocks are trained
in sequence, block k for `recipe.epochs` epochs continuing from block k-1, and the model and optimizer state
are checkpointed before block 1 and after every block.

Determinism is what makes exact unlearning cheap: the data order of block k, epoch e is a function of
(seed, k, e) and of the block's sample ids only, the torch RNG is reseeded at the start of every block, and
deterministic algorithms are requested. So training blocks d.. without the forget samples, starting from
checkpoint d, is bit-identical to retraining everything without them (blocks before d are unchanged).

One module per concern:
- TrainingRecipe, everything besides the data and the architecture that fixes the weights, is defined in
  app/registry/recipe.py (torch-free: the API validates the recipes a model policy carries);
- `optimizer`: the optimizer a recipe names and the learning rate of each block;
- `determinism`: seeds derived from the recipe's seed, deterministic kernels;
- `layout`: which samples sit in which block, and the order each (block, epoch) visits them in;
- `loop`: `train_blocks`, the block loop every run goes through;
- `runs`: the ways to train (recording provenance, fresh without a record, retraining a record's version
  without some samples);
- `record`: TrainingRecord, what a provenance run leaves behind and how to read it;
- `shards`: SISA's sharded layout, members trained shard by shard, and the restart of the affected ones;
- `checkpoints`, `gradients`: the block-checkpoint and first-epoch-gradient files.
"""

from app.registry.recipe import TrainingRecipe
from workers.modeling.training.checkpoints import CHECKPOINT_DIR
from workers.modeling.training.determinism import deterministic
from workers.modeling.training.gradients import GRADIENTS_FILE
from workers.modeling.training.layout import epoch_order, subject_aligned_blocks
from workers.modeling.training.loop import BlockHook, BlockRun, GradientSink, Progress, train_blocks
from workers.modeling.training.optimizer import block_lr, make_optimizer
from workers.modeling.training.record import MODEL_DIR, RECORD_FILE, TrainingRecord
from workers.modeling.training.runs import retrain_without, train_fresh, train_with_provenance

__all__ = [
    "CHECKPOINT_DIR",
    "GRADIENTS_FILE",
    "MODEL_DIR",
    "RECORD_FILE",
    "BlockHook",
    "BlockRun",
    "GradientSink",
    "Progress",
    "TrainingRecipe",
    "TrainingRecord",
    "block_lr",
    "deterministic",
    "epoch_order",
    "make_optimizer",
    "retrain_without",
    "subject_aligned_blocks",
    "train_blocks",
    "train_fresh",
    "train_with_provenance",
]
