"""Gemma 3 through transformers: Gemma3ForConditionalGeneration (google/gemma-3-4b-it: a SigLIP
ViT over 896 px images in 14 px patches, Gemma3MultiModalProjector, the Gemma 3 language model).

Towers in pruning order (each one's blocks found as the longest block list under its module):
- `vision`: the SigLIP encoder layers (every one feeds the image features: Gemma 3 reads the
  ViT's last hidden state, after its post-layernorm);
- `projector`: multi_modal_projector as one block, pruned only when `prune_towers` names it. It
  average-pools the patch grid to mm_tokens_per_image tokens, applies an RMSNorm
  (mm_soft_emb_norm) and projects with `torch.matmul(x, mm_input_projection_weight)`: a parameter
  of shape (vision width, text width), not an nn.Linear. It is pruned as one PrunableMatrix over
  that parameter, `transposed` (the seam's matrices are (outputs, inputs), so Wanda compares per
  text-width output row and its column norms are over the vision width), whose input is the
  RMSNorm's output: the statistics observe mm_soft_emb_norm's forward and take its output (the
  norm applied to the hook's input, which is what the matmul reads);
- `language`: the Gemma 3 decoder layers. They alternate sliding-window and global attention
  (config.layer_types): each kind has its own attention mask and its own rotary table (local base
  10k, global base 1M), and every block receives those of its kind, as the model's forward hands
  them over (walk.capture_arguments keeps each block's own). The masks are the model's own: with
  `token_type_ids` (1 at the image's soft tokens, which collate passes through from the
  processor) the image's tokens attend to each other both ways, the rest causally. Pads are kept
  out of statistics. Embeddings scaled by sqrt(width) and (1 + weight) RMSNorms are the model's.

Wanda compares per output row in every tower. A conversation is rendered with Gemma's chat
template (`<start_of_turn>user ... <end_of_turn>`, the assistant as `model`, `<start_of_image>` where
the image goes, which the processor expands to `\\n\\n<start_of_image>` + mm_tokens_per_image x
`<image_soft_token>` + `<end_of_image>\\n\\n`); an answer's loss covers its text and the
`<end_of_turn>` that closes it (the token Gemma 3's generation config stops at, with `<eos>`). With
`tokenizer=bytes` the processor is built here: ByT5's byte tokenizer with Gemma's special tokens,
Gemma 3's image processor at the architecture's image size (mean and std 0.5, SigLIP's), and
Gemma 3's template; the model config takes the token ids.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from tokenizers import AddedToken

from ecoflap_exp.models.chat import ChatVLMAdapter, checkpoint_processor
from ecoflap_exp.models.loading import DType
from ecoflap_exp.models.seam import PrunableMatrix, Tower, first_input

#: google/gemma-3-4b-it's chat template (its chat_template.json): the BOS, an optional system turn
#: folded into the first user turn, roles alternating user/model, `<start_of_image>` per image
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = \"\" -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}{%- else -%}"
    "{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}{%- elif item['type'] == 'text' -%}"
    "{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}{%- else -%}"
    "{{ raise_exception(\"Invalid content type\") }}{%- endif -%}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)
#: Gemma's tokens (google/gemma-3-4b-it tokenizer_config.json): BOS, turn delimiters, the image's
#: begin, end and soft (placeholder) tokens
BOS, END_OF_TURN, START_OF_TURN = "<bos>", "<end_of_turn>", "<start_of_turn>"
BOI, EOI, IMAGE = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
#: SigLIP's normalisation (google/gemma-3-4b-it preprocessor_config.json: image_mean, image_std)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


def load_processor(tokenizer: str | None, checkpoint: str | None, config: Any) -> Any:
    if tokenizer != "bytes":
        return checkpoint_processor(tokenizer, checkpoint)
    # ByT5 keeps its EOS at id 1 (where Gemma's <eos> is), stripping the spaces around it unless told
    # not to: the template's newline after <end_of_turn> is a token of the text
    byte_tokenizer = transformers.ByT5Tokenizer(
        eos_token=AddedToken(END_OF_TURN, special=True), bos_token=BOS,
        extra_special_tokens={"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE})
    byte_tokenizer.add_special_tokens({"additional_special_tokens": [START_OF_TURN]},
                                      replace_extra_special_tokens=False)
    size = config.vision_config.image_size
    images = transformers.Gemma3ImageProcessor(size={"height": size, "width": size}, image_mean=list(SIGLIP_MEAN),
                                               image_std=list(SIGLIP_STD))
    return transformers.Gemma3Processor(image_processor=images, tokenizer=byte_tokenizer,
                                        image_seq_length=config.mm_tokens_per_image, chat_template=GEMMA3_TEMPLATE)


def projection_matrix(prefix: str, projector: torch.nn.Module) -> PrunableMatrix:
    """The projector's matmul weight, (vision width, text width) in the parameter, as an (outputs,
    inputs) matrix whose input is mm_soft_emb_norm's output."""
    norm = projector.mm_soft_emb_norm

    def normed(args: tuple, kwargs: dict) -> torch.Tensor:
        # forward, not __call__: the output the hook's module just computed, without running its hooks again
        return norm.forward(first_input(args, kwargs))

    return PrunableMatrix(f"{prefix}.mm_input_projection_weight", projector.mm_input_projection_weight, norm,
                          input_of=normed, transposed=True)


class Gemma3Adapter(ChatVLMAdapter):
    """`checkpoint` a hub name or folder (google/gemma-3-4b-it), or `init=random` with a shipped
    `arch`; `tokenizer`: the checkpoint's processor, or `bytes`."""

    def __init__(self, dtype: DType = "bfloat16", tokenizer: str | None = None, **common: Any):
        super().__init__(**common)
        self.model = self.load_model(transformers.Gemma3ForConditionalGeneration, dtype)
        self.processor = load_processor(tokenizer, self.checkpoint, self.model.config)
        if self.init == "random":
            # transformers initialises the projection to zeros (Gemma3PreTrainedModel._init_weights), for a
            # checkpoint to fill: a random model's images would reach the language model as zeros
            projection = self.model.model.multi_modal_projector.mm_input_projection_weight
            generator = torch.Generator().manual_seed(self.seed)
            with torch.no_grad():
                projection.copy_(torch.randn(projection.shape, generator=generator)
                                 * self.model.config.initializer_range)
        if tokenizer == "bytes":
            config = self.model.config
            config.boi_token_id, config.eoi_token_id, config.image_token_id = (
                self.tokenizer.convert_tokens_to_ids([BOI, EOI, IMAGE]))

    @property
    def text_start(self) -> str:
        """Nothing: Gemma's template writes the BOS itself."""
        return ""

    @property
    def answer_end(self) -> str:
        """<end_of_turn>, which Gemma's template closes every turn with (its tokenizer's EOS is <eos>)."""
        return END_OF_TURN

    def last_image_token(self, ids: list[int]) -> int:
        """The image's last token: its <end_of_image> in the processor's ids, the <start_of_image>
        placeholder in the text before the processor expands it."""
        marks = set(self.tokenizer.convert_tokens_to_ids([BOI, EOI]))
        found = [i for i, t in enumerate(ids) if t in marks]
        if not found:
            return super().last_image_token(ids)  # names the missing image
        return found[-1]

    def all_towers(self) -> list[Tower]:
        projector = self.model.model.multi_modal_projector
        return self.projected_towers(projector_matrices=[projection_matrix("model.multi_modal_projector", projector)])
