"""Everything that learns: compression ops, fine-tuning with distillation, measurement, export and the task zoo.

The verbs follow one shape: ``compress(teacher, policy) -> student``, ``finetune(student, teacher, data, policy)``,
``evaluate(student, val, example_input) -> metrics``, ``export_compressed(student, path, input_shape)``.
"""

from .attention import SplitAttention, split_attention
from .compress import (
    LayerStructure,
    compress,
    compressible_layers,
    describe_layers,
    pruned_share,
    structure_report,
    unsearched_weights,
)
from .distill import FinetuneConfig, NonFiniteLossError, attention_map, feature_map, finetune, kd_loss
from .export import export_compressed, load_compressed
from .measure import accuracy, bitops, deployable, evaluate, measure_latency, predict_logits, size_bytes
from .prune import channel_groups, magnitude_mask, shrink
from .quant import ActQuant, fake_quant_weight, to_quantized
from .recurrent import SplitRNN, split_recurrent
from .tasks import BUILTIN_TASKS, Task, list_tasks, load_task

__all__ = [
    "BUILTIN_TASKS",
    "ActQuant",
    "FinetuneConfig",
    "LayerStructure",
    "NonFiniteLossError",
    "SplitAttention",
    "SplitRNN",
    "Task",
    "accuracy",
    "attention_map",
    "feature_map",
    "bitops",
    "channel_groups",
    "compress",
    "compressible_layers",
    "deployable",
    "describe_layers",
    "pruned_share",
    "structure_report",
    "unsearched_weights",
    "evaluate",
    "export_compressed",
    "fake_quant_weight",
    "finetune",
    "kd_loss",
    "list_tasks",
    "load_compressed",
    "load_task",
    "magnitude_mask",
    "measure_latency",
    "predict_logits",
    "shrink",
    "size_bytes",
    "split_attention",
    "split_recurrent",
    "to_quantized",
]
