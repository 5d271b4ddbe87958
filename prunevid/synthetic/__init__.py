"""The synthetic video world of the demo benchmark: a video-QA benchmark in MVBench's format, generated
deterministically from a seed, and the demo model that lives in it. ``pixels.py`` owns how a video looks (frame
format, palettes, shape masks, backgrounds, painting, per-token coverage, mp4); ``world.py`` what happens in it
(names, tasks, object tracks, placement, each task's video maker); ``questions.py`` what is asked (the frozen
prompt, options, each task's question maker, captions, vocabulary); ``version2.py`` the benchmark's version 2
(clutter, more and smaller objects, the question drawn before the video so no text-only rule beats chance);
``version3.py`` version 3 (version 2's questions, the evidence on screen for a few frames only) and the ideal
reader that measures how much evidence a kept token set holds; ``splits.py`` items and splits (per-item seeds,
files on disk, checksums, in-memory training draws; ``version=2`` or ``3`` selects a later version; and
``ideal_accuracy``, the ideal reader over a world's items); ``demo_model.py`` the demo model's tokenizer and
architecture.
Each file imports only the ones listed before it, and none imports ``prunevid.benchmarks``
(``benchmarks/synthetic.py`` imports this package). Every public name but ``demo_model``'s is re-exported here;
``demo_model`` needs torch and transformers, so it is imported on its own (``prunevid.synthetic.demo_model``), and
so is ``training/``, the demo model's trainer (run by ``data_scripts/train_demo_model.py``).
"""
from .pixels import (COLORS, FILE_FRAMES, FPS, FRAME_SIZE, NUM_FRAMES, SCENES, make_background, object_pixels,
                     render, shape_mask, token_coverage, write_mp4)
from .world import (CHANCE, COLOR_NAMES, DIRECTIONS, GENERATOR_VERSION, NUM_OPTIONS, SCENE_NAMES, SHAPES, TASKS,
                    VIDEO_MAKERS, Track, Video)
from .questions import (NUMBERS, OPTION_LETTERS, QUESTION_MAKERS, SYNTHETIC_ANSWER_PREFIX, SYNTHETIC_POST_PROMPT,
                        SYNTHETIC_SYSTEM, YES_NO, all_questions, describe, mvbench_answer, synthetic_question,
                        vocabulary_strings)
from .version2 import (CLUTTER_COLORS, GENERATOR_VERSION_V2, Clutter, VideoV2, ask, cluttered_background,
                       covered_share, make_question_and_video, question_pixels, question_tracks)
from .version3 import GENERATOR_VERSION_V3, evidence_survives, make_question_and_video_v3
from .splits import (BENCHMARK_DIR, BENCHMARK_DIR_V2, BENCHMARK_DIR_V3, DEFAULT_N_PER_TASK, DEFAULT_N_PER_TASK_V2,
                     SPLIT_SEEDS, SPLIT_SEEDS_V2, SPLIT_SEEDS_V3, VERSIONS, Sample, default_n_per_task, ensure_split,
                     frames_tensor, ideal_accuracy, item_rng, make_item, named_track, sample, split_checksum,
                     split_dir, split_items, split_seeds, video_name, write_split)

__all__ = ["COLORS", "FILE_FRAMES", "FPS", "FRAME_SIZE", "NUM_FRAMES", "SCENES", "make_background", "object_pixels",
           "render", "shape_mask", "token_coverage", "write_mp4",
           "CHANCE", "COLOR_NAMES", "DIRECTIONS", "GENERATOR_VERSION", "NUM_OPTIONS", "SCENE_NAMES", "SHAPES", "TASKS",
           "VIDEO_MAKERS", "Track", "Video",
           "NUMBERS", "OPTION_LETTERS", "QUESTION_MAKERS", "SYNTHETIC_ANSWER_PREFIX", "SYNTHETIC_POST_PROMPT",
           "SYNTHETIC_SYSTEM", "YES_NO", "all_questions", "describe", "mvbench_answer", "synthetic_question",
           "vocabulary_strings",
           "CLUTTER_COLORS", "GENERATOR_VERSION_V2", "Clutter", "VideoV2", "ask", "cluttered_background",
           "covered_share", "make_question_and_video", "question_pixels", "question_tracks",
           "GENERATOR_VERSION_V3", "evidence_survives", "ideal_accuracy", "make_question_and_video_v3",
           "BENCHMARK_DIR", "BENCHMARK_DIR_V2", "BENCHMARK_DIR_V3", "SPLIT_SEEDS_V3", "DEFAULT_N_PER_TASK", "DEFAULT_N_PER_TASK_V2", "SPLIT_SEEDS",
           "SPLIT_SEEDS_V2", "VERSIONS", "Sample", "default_n_per_task", "ensure_split", "frames_tensor", "item_rng",
           "make_item", "named_track", "sample", "split_checksum", "split_dir", "split_items", "split_seeds",
           "video_name", "write_split"]
