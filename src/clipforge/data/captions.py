"""Natural, varied captions for synthetic scenes.

Every caption names every object with its colour and its shape (so the image-text pairing stays
learnable with several objects), except that a world may name a single object by its colour alone or
its shape alone ("a red object", "a small circle") with set probabilities (``WorldConfig``'s
``colour_only_captions`` and ``shape_only_captions``), as alt-text often does. Templates, synonyms
and word order vary: object phrases ("a small red circle", "a circle in red", "a big red object
shaped like a circle"), sentence frames ("a picture of ...", "... on a dark background.", "two
objects: ..."), spatial relations computed from the layout, and a random order of objects.
Zero-shot class names are phrases the captions use: "circle", "red object", "red circle", "two
objects"; the colour and shape tasks prompt each class together with every value of the other
attribute, as the captions name them (:func:`clipforge.data.world_eval.task_prompts`).
"""

from __future__ import annotations

import re

import numpy as np

from clipforge.data.render import Obj, Scene

COUNT_WORDS = ("one", "two", "three")
_SHAPE_SYNONYMS = {"circle": ("disk",), "cross": ("plus sign",)}
_COLOUR_SYNONYMS = {"purple": ("violet",)}
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
_MEDIA = ("picture", "photo", "image", "drawing", "rendering")
_POSITION_PHRASES = {  # "... a red circle {phrase}"
    "top left": "in the top left", "top": "at the top", "top right": "in the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left", "bottom": "at the bottom", "bottom right": "in the bottom right",
}
SYNONYM_P = 0.15  # how often a shape/colour synonym replaces the canonical word
# Captions fit the demo's 32-token context (SOT + 30 + EOT) with room to spare, so no object
# is ever cut off by truncation.
MAX_LENGTH = 28
_TOKENS = re.compile(r"[^\W\d_]+|\d|[^\s\w]+")


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _word(rng: np.random.Generator, word: str, synonyms: dict[str, tuple[str, ...]]) -> str:
    if word in synonyms and rng.random() < SYNONYM_P:
        return _pick(rng, synonyms[word])
    return word


def object_phrase(obj: Obj, rng: np.random.Generator, with_position: bool = True, short: bool = False) -> str:
    """An indefinite noun phrase naming the object's colour and shape (and maybe size/position).

    ``short`` keeps to two or three words, so a three-object caption fits a 32-token context.
    """
    shape = _word(rng, obj.shape, _SHAPE_SYNONYMS)
    colour = _word(rng, obj.colour, _COLOUR_SYNONYMS)
    size = _pick(rng, _SIZE_WORDS[obj.size])
    forms = [f"{colour} {shape}", f"{size} {colour} {shape}", f"{shape} in {colour}"]
    if not short:
        forms += [f"{size} {colour} object shaped like {article(shape)}", f"{colour} object shaped like {article(shape)}"]
    phrase = article(_pick(rng, forms))
    if with_position and rng.random() < 0.3:
        phrase += " " + _POSITION_PHRASES[obj.position]
    return phrase


def join_list(phrases: list[str], rng: np.random.Generator) -> str:
    if len(phrases) == 1:
        return phrases[0]
    sep = ", and " if len(phrases) > 2 and rng.random() < 0.5 else " and "
    return ", ".join(phrases[:-1]) + sep + phrases[-1]


def _relation(a: Obj, b: Obj) -> str:
    """Where a is relative to b, from their centres."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def caption_length(caption: str) -> int:
    """Words and punctuation runs: a BPE trained on these captions gives about one token each."""
    return len(_TOKENS.findall(caption))


def colour_phrase(obj: Obj, rng: np.random.Generator) -> str:
    """A phrase naming only the object's colour: "a red object", "a red shape"."""
    colour = _word(rng, obj.colour, _COLOUR_SYNONYMS)
    return article(_pick(rng, (f"{colour} object", f"{colour} shape")))


def shape_phrase(obj: Obj, rng: np.random.Generator) -> str:
    """A phrase naming only the object's shape: "a circle", "a small circle"."""
    shape = _word(rng, obj.shape, _SHAPE_SYNONYMS)
    return article(_pick(rng, (shape, f"{_pick(rng, _SIZE_WORDS[obj.size])} {shape}")))


def describe(scene: Scene, rng: np.random.Generator, colour_only: float = 0.0, shape_only: float = 0.0) -> str:
    """One caption of ``scene``, at most MAX_LENGTH tokens.

    It names every object's colour and shape, except that a single object is named by its colour
    alone with probability ``colour_only`` and by its shape alone with probability ``shape_only``
    (as alt-text often is). With both 0 no extra random number is drawn: older worlds' captions
    are unchanged.
    """
    partial = (colour_only, shape_only)
    caption = _describe(scene, rng, False, partial)
    return caption if caption_length(caption) <= MAX_LENGTH else _describe(scene, rng, True, partial)


def _single_phrase(obj: Obj, rng: np.random.Generator, partial: tuple[float, float]) -> str:
    if any(partial):
        u = rng.random()
        if u < partial[0]:
            return colour_phrase(obj, rng)
        if u < partial[0] + partial[1]:
            return shape_phrase(obj, rng)
    return object_phrase(obj, rng, with_position=False)


def _describe(scene: Scene, rng: np.random.Generator, short: bool, partial: tuple[float, float]) -> str:
    objs = [scene.objects[i] for i in rng.permutation(len(scene.objects))]
    medium = _pick(rng, _MEDIA)
    tone = scene.background.get("tone", "plain")
    background = "a patterned" if tone == "patterned" else article(tone)
    if len(objs) == 1:
        np_ = _single_phrase(objs[0], rng, partial)
        pos = _POSITION_PHRASES[objs[0].position]
        frames = [
            f"{np_}.", f"{article(medium)} of {np_}.", f"{np_} on {background} background.",
            f"there is {np_} {pos}.", f"{pos}, {np_}.", f"this {medium} shows {np_}.",
            f"one object: {np_}.", f"{article(medium)} of {np_} {pos}.",
        ]
        return _pick(rng, frames)
    # Three objects: short phrases without positions (every object named within ~30 tokens).
    short = short or len(objs) == 3
    phrases = [object_phrase(o, rng, with_position=not short, short=short) for o in objs]
    listing = join_list(phrases, rng)
    count = COUNT_WORDS[len(objs) - 1]
    frames = [
        f"{count} objects: {listing}.", f"{article(medium)} of {listing}.",
        f"{listing} on {background} background.", f"there are {count} objects: {listing}.",
        f"{article(medium)} of {count} objects: {listing}.",
    ]
    if len(objs) == 2:
        a = object_phrase(objs[0], rng, with_position=False, short=short)
        b = object_phrase(objs[1], rng, with_position=False, short=short)
        frames.append(f"{a} {_relation(objs[0], objs[1])} {b}.")
    return _pick(rng, frames)
