"""MVBench: 20 tasks x 200 questions, official layout ``DATAS/MVBench/{json,video}`` (prunevid-method.md §5.3)."""
from __future__ import annotations

import os
from typing import List

from .base import LMMS_SYSTEM, Benchmark, Item, Prompt, load_json, official_mc_prompt

SYSTEM = ("Carefully watch the video and pay attention to the cause and sequence of events, the detail and "
          "movement of objects, and the action and pose of persons. Based on your observations, select the best "
          "option that accurately addresses the question.\n")   # upstream SYSTEM_MVBENCH ends in a newline

# task -> (json file, video prefix under DATAS/MVBench/video/, media type, bounded)
TASKS = {
    "Action Sequence": ("action_sequence.json", "star/Charades_v1_480/", "video", True),
    "Action Prediction": ("action_prediction.json", "star/Charades_v1_480/", "video", True),
    "Action Antonym": ("action_antonym.json", "ssv2_video/", "video", False),
    "Fine-grained Action": ("fine_grained_action.json", "Moments_in_Time_Raw/videos/", "video", False),
    "Unexpected Action": ("unexpected_action.json", "FunQA_test/test/", "video", False),
    "Object Existence": ("object_existence.json", "clevrer/video_validation/", "video", False),
    "Object Interaction": ("object_interaction.json", "star/Charades_v1_480/", "video", True),
    "Object Shuffle": ("object_shuffle.json", "perception/videos/", "video", False),
    "Moving Direction": ("moving_direction.json", "clevrer/video_validation/", "video", False),
    "Action Localization": ("action_localization.json", "sta/sta_video/", "video", True),
    "Scene Transition": ("scene_transition.json", "scene_qa/video/", "video", False),
    "Action Count": ("action_count.json", "perception/videos/", "video", False),
    "Moving Count": ("moving_count.json", "clevrer/video_validation/", "video", False),
    "Moving Attribute": ("moving_attribute.json", "clevrer/video_validation/", "video", False),
    "State Change": ("state_change.json", "perception/videos/", "video", False),
    "Fine-grained Pose": ("fine_grained_pose.json", "nturgbd/", "video", False),
    "Character Order": ("character_order.json", "perception/videos/", "video", False),
    "Egocentric Navigation": ("egocentric_navigation.json", "vlnqa/", "video", False),
    "Episodic Reasoning": ("episodic_reasoning.json", "tvqa/frames_fps3_hq/", "frame", True),
    "Counterfactual Inference": ("counterfactual_inference.json", "clevrer/video_validation/", "video", False),
}
ITEMS_PER_TASK = 200


def lmms_question_block(question: str, candidates) -> str:
    """lmms-eval ``mvbench_doc_to_text`` (default prompts): no space after "Question:", singular "Option:",
    every option on its own line, then the post prompt ending in a newline."""
    text = "Question:" + question + "\nOption:\n"
    for letter, cand in zip("ABCDEFGHIJ", candidates):
        text += f"({letter}) {cand}\n"
    return text + "Only give the best option.\n"


class MVBench(Benchmark):
    name = "mvbench"
    folder = "MVBench"
    data_script = "mvbench"

    def required_files(self, data_root: str) -> List[str]:
        return [os.path.join(self.root(data_root), "json", spec[0]) for spec in TASKS.values()]

    def check_data(self, data_root: str) -> None:
        # Any present task is enough to run (a user may hold a partial download); none at all is an error.
        present = [p for p in self.required_files(data_root) if os.path.exists(p)]
        if not present:
            super().check_data(data_root)

    def list_items(self, data_root: str) -> List[Item]:
        root = self.root(data_root)
        items = []
        for task, (json_name, prefix, kind, bounded) in TASKS.items():
            path = os.path.join(root, "json", json_name)
            if not os.path.exists(path):
                continue
            key = json_name[:-len(".json")]
            for i, row in enumerate(load_json(path)):
                bound = (float(row["start"]), float(row["end"])) if bounded and "start" in row and "end" in row else None
                items.append(Item(id=f"{key}/{i}", category=task,
                                  video=os.path.join(root, "video", prefix, row["video"]),
                                  question=row["question"], candidates=list(row["candidates"]),
                                  answer=row["answer"], bound=bound, frame_folder=kind == "frame",
                                  extra={"task": key}))
        return items

    def prompt(self, item: Item, protocol: str) -> Prompt:
        if protocol == "official":
            return official_mc_prompt(SYSTEM, item)
        return Prompt(system=LMMS_SYSTEM, text=lmms_question_block(item.question, item.candidates))
