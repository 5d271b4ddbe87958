"""Pieces of the demo model's trainer (``prunevid.synthetic.training``, run by data_scripts/train_demo_model.py) that
need no training: sequences, loss masks, aux labels, batches."""
import ast
import importlib.util
import json
import math
import os
import re
import shutil

import numpy as np
import pytest
import torch

from prunevid import synthetic as S
from prunevid.synthetic import demo_model as D
from prunevid.synthetic import training
from prunevid.synthetic.training import checkpoints


@pytest.fixture(scope="module")
def T():
    return training


@pytest.fixture(scope="module")
def enc(T):
    return T.Encoder(D.build_demo_tokenizer())


def test_the_script_runs_the_package_and_the_synthetic_world_never_imports_it(T):
    """data_scripts/train_demo_model.py is the package's entry point, nothing more; no file of prunevid.synthetic
    imports the training package (importing the world does not load the trainer)."""
    path = os.path.join(os.path.dirname(__file__), "..", "data_scripts", "train_demo_model.py")
    spec = importlib.util.spec_from_file_location("train_demo_model", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main is T.main
    root = os.path.dirname(S.__file__)
    for f in sorted(os.listdir(root)):
        if not f.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(open(os.path.join(root, f)).read())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
            else:
                continue
            assert not any("training" in n.split(".") for n in names), f"prunevid/synthetic/{f} imports the trainer"


def test_training_sequence_is_the_chat_template_of_a_multi_turn_conversation(T, enc):
    tok = enc.tok
    s = S.make_item("state_change", S.item_rng(3, "state_change", 1), extras=True)
    qs = [s.item, *s.extra.values()]
    assert len(qs) >= 2
    ids, w = enc.training_sequence(qs, s.caption, caption_weight=0.5)
    assert len(ids) == len(w)
    messages = [{"role": "system", "content": [{"type": "text", "text": S.SYNTHETIC_SYSTEM}]}]
    for k, q in enumerate(qs):
        text = S.synthetic_question(q["question"], q["candidates"])
        messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]} if k == 0
                        else {"role": "user", "content": text})
        messages.append({"role": "assistant", "content": S.SYNTHETIC_ANSWER_PREFIX + S.mvbench_answer(
            q["candidates"], q["answer"])[1:]})
    messages += [{"role": "user", "content": T.CAPTION_REQUEST}, {"role": "assistant", "content": s.caption}]
    want = tok.apply_chat_template(messages, tokenize=False).replace("<video>", "<video>" * T.N_VIDEO)
    assert tok.decode(ids) == want
    # the first turn is exactly the evaluation prompt
    first = enc.first_turn(qs[0]["question"], qs[0]["candidates"])
    assert ids[:len(first)] == first
    assert tok.decode(first) == D.render_prompt(tok, qs[0]["question"], qs[0]["candidates"], num_video_tokens=T.N_VIDEO)
    # loss only on the answers ("B) red<|im_end|>") and the caption
    w = np.asarray(w)
    answers = tok.decode([i for i, x in zip(ids, w) if x == 1.0])
    assert answers == "".join(S.mvbench_answer(q["candidates"], q["answer"])[1:] + "<|im_end|>" for q in qs)
    assert tok.decode([i for i, x in zip(ids, w) if x == 0.5]) == s.caption + "<|im_end|>"


def test_patch_labels_follow_the_tracks(T):
    s = S.make_item("moving_direction", S.item_rng(0, "moving_direction", 5), difficulty=0.0)
    lab = T.patch_labels(s.video)
    assert tuple(lab.shape) == (S.NUM_FRAMES, 196, 3)
    tr = s.video.tracks[0]
    for t in (0, S.NUM_FRAMES - 1):
        cx, cy = int(tr.x[t]) // 8, int(tr.y[t]) // 8
        assert lab[t, cy * 14 + cx, 0] == S.COLOR_NAMES.index(tr.color[t]) + 1
        assert lab[t, cy * 14 + cx, 1] == S.SHAPES.index(tr.shape) + 1
        assert 0 < (lab[t, :, 0] > 0).sum() <= (tr.size // 8 + 2) ** 2
    assert (lab[..., 2] == S.SCENE_NAMES.index(s.video.scenes[0])).all()


def test_batches_are_a_function_of_seed_and_step(T, enc):
    args = T.parse_args(["--batch", "2", "--seed", "4"])
    a, b, c = T.make_batch(7, args, enc), T.make_batch(7, args, enc), T.make_batch(8, args, enc)
    assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(a[:7], b[:7])) and a[7:] == b[7:]
    assert not torch.equal(a[3], c[3])
    ids, mask, wt, pix, aux, lm_aux, answers, ground, track, plan = a
    assert ground == [] and track == []         # the read-out and tracking supervision are off by default
    assert plan is None                         # pruned input is off by default
    assert lm_aux is None                       # the LM-side loss is off by default
    assert pix.shape == (2, S.NUM_FRAMES, 3, S.FRAME_SIZE, S.FRAME_SIZE) and aux.shape == (2 * S.NUM_FRAMES, 196, 3)
    assert (wt[mask == 0] == 0).all() and wt.sum() > 0


def test_curriculum_ramps(T):
    args = T.parse_args(["--curriculum-steps", "100", "--start-difficulty", "0.2", "--shuffle-from", "0.5"])
    assert T.curriculum(0, args) == (0.2, 0.0)
    assert T.curriculum(50, args)[1] == 0.0 and 0 < T.curriculum(75, args)[1] < 1
    assert T.curriculum(100, args) == (1.0, 1.0) and T.curriculum(500, args) == (1.0, 1.0)


def test_one_training_step_and_evaluation_run(T, enc):
    args = T.parse_args(["--batch", "1", "--size", "xs", "--questions-per-video", "2"])
    args.paren_id, args.letter_ids = enc.tok.convert_tokens_to_ids("("), enc.letter_ids
    torch.manual_seed(0)
    model, _ = D.build_demo_model(enc.tok, "xs", seed=0)
    model.train()
    head = torch.nn.Linear(model.config.text_config.hidden_size, sum(T.N_AUX))
    capture = T.AuxCapture(model)
    loss, stats = T.train_loss(model, head, capture, T.make_batch(0, args, enc), args)
    loss.backward()
    assert torch.isfinite(loss) and {"lm", "letter", "caption", "aux"} <= set(stats)
    assert head.weight.grad is not None and model.model.multi_modal_projector.linear_1.weight.grad is not None
    capture.handle.remove()
    args.eval_n = 1
    r = T.evaluate(model, enc, T.make_eval_set(args)[:2], args)
    assert r["n"] == 2 and 0.0 <= r["accuracy"] <= 1.0


def test_shape_weight_adds_the_object_patches_shape_loss_alone(T, enc):
    """--shape-weight W adds W x the shape cross-entropy over the patches an object covers (background excluded),
    computed from the same per-patch head; it needs the per-patch loss on and refuses a negative weight."""
    import torch.nn.functional as F
    base = ["--batch", "1", "--size", "xs", "--questions-per-video", "2", "--no-bf16"]
    losses = {}
    for w in (0.0, 2.0):
        args = T.parse_args(base + ["--shape-weight", str(w)])
        args.paren_id, args.letter_ids = enc.tok.convert_tokens_to_ids("("), enc.letter_ids
        torch.manual_seed(0)
        model, _ = D.build_demo_model(enc.tok, "xs", seed=0)
        model.eval()                                          # no dropout: the two losses differ by the term alone
        head = torch.nn.Linear(model.config.text_config.hidden_size, sum(T.N_AUX))
        torch.nn.init.normal_(head.weight, std=0.5)
        capture = T.AuxCapture(model)
        seen = []                                             # the projector output, kept for the expected value
        hook = model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
        batch = T.make_batch(0, args, enc)
        losses[w] = T.train_loss(model, head, capture, batch, args)
        hook.remove()
        if w:
            z = head(seen[0]).float()
            logits = torch.split(z, list(T.N_AUX), dim=-1)[1].reshape(-1, T.N_AUX[1])
            target = batch[4][..., 1].reshape(-1)
            on = target > 0
            assert 0 < on.sum() < len(target)                  # objects, and background left out
            expect = F.cross_entropy(logits[on], target[on])
        capture.handle.remove()
    (l0, s0), (l2, s2) = losses[0.0], losses[2.0]
    assert "shape" not in s0 and s2["shape"] == pytest.approx(expect.item(), rel=1e-4)
    assert float(l2 - l0) == pytest.approx(2.0 * s2["shape"], rel=1e-3)
    for bad in (["--shape-weight", "-1"], ["--shape-weight", "1", "--aux-weight", "0"]):
        with pytest.raises(SystemExit):
            T.parse_args(bad)


def test_frames_schedule(T, enc):
    args = T.parse_args(["--batch", "1", "--frames-schedule", "4:10,8:20"])
    assert [T.frames_at(s, args) for s in (0, 9, 10, 19, 20)] == [4, 4, 8, 8, 16]
    assert T.frame_subset(4).tolist() == [0, 5, 10, 15]
    ids, mask, wt, pix, aux, *_ = T.make_batch(0, args, enc)
    assert pix.shape[1] == 4 and aux.shape[0] == 4
    assert (ids == enc.video_id).sum() == 4 * T.TOKENS_PER_FRAME + 1


def test_lookup_sequences(T, enc):
    args = T.parse_args(["--lookup", "4"])
    ids, mask, wt, answers = T.make_lookup_batch(3, args, enc)
    assert ids.shape[0] == 4 and (wt[mask == 0] == 0).all()
    for row, w in zip(ids, wt):
        text = enc.tok.decode(row[w == 0][:int((w == 0).sum())].tolist())
        ans = enc.tok.decode(row[w == 1].tolist())
        q = text.split("Which option is ")[1].split("?")[0]
        letter = ans[0]
        assert f"({letter}) {q}\n" in text + "\n" and ans.endswith(f") {q}<|im_end|>")


def test_lm_token_labels_are_causal_and_follow_the_tracks(T):
    """Every per-video-token target depends only on frames up to the token's own: changing what happens after
    frame j leaves the targets of frames <= j unchanged."""
    s = S.make_item("state_change", S.item_rng(0, "state_change", 3))
    sub = np.arange(S.NUM_FRAMES)
    lab = T.lm_token_labels(s.video, sub)
    n = T.CGRID * T.CGRID
    assert tuple(lab.shape) == (S.NUM_FRAMES * n + 1, len(T.N_LM_AUX))
    for j, c in enumerate(T.N_LM_AUX):
        col = lab[:, j]
        assert ((col == T.LM_AUX_IGNORE) | ((col >= 0) & (col < c))).all(), j
    tr = next(t for t in s.video.tracks if t.last_color != t.first_color)
    k = tr.color.index(tr.last_color)              # the frame of the colour change
    import copy
    late = copy.deepcopy(s.video)
    for t in late.tracks:
        t.color = t.color[:k] + [t.color[k - 1]] * (S.NUM_FRAMES - k)       # no change at all
    lab2 = T.lm_token_labels(late, sub)
    assert torch.equal(lab[:k * n], lab2[:k * n])
    assert not torch.equal(lab[k * n:], lab2[k * n:])
    # at the last frame the object's cells say "changed", with its first colour; before the change they do not
    cx, cy = int(tr.x[-1]) // T.CELL, int(tr.y[-1]) // T.CELL
    row = lab[(S.NUM_FRAMES - 1) * n + cy * T.CGRID + cx]
    if row[0] != 0:                                # the centre cell is owned by the object
        assert row[0] == S.COLOR_NAMES.index(tr.last_color) + 1 and row[3] == 1
        assert row[4] == S.COLOR_NAMES.index(tr.first_color)
    assert (lab[:k * n, 3][lab[:k * n, 3] != T.LM_AUX_IGNORE] == 0).all()
    # video-level targets: objects seen so far and the first scene, on every token and on the newline token
    assert lab[-1, 6] == min(len(s.video.tracks), 5) and lab[-1, 7] == S.SCENE_NAMES.index(s.video.scenes[0])


def test_lm_aux_loss_trains_the_llm_layers(T, enc):
    args = T.parse_args(["--batch", "1", "--size", "xs", "--lm-aux-weight", "0.5", "--lm-aux-layer", "0"])
    args.paren_id, args.letter_ids = enc.tok.convert_tokens_to_ids("("), enc.letter_ids
    torch.manual_seed(0)
    model, _ = D.build_demo_model(enc.tok, "xs", seed=0)
    model.train()
    head = torch.nn.Linear(model.config.text_config.hidden_size, sum(T.N_AUX))
    lm_head = torch.nn.Linear(model.config.text_config.hidden_size, sum(T.N_LM_AUX))
    capture, lm_capture = T.AuxCapture(model), T.LayerCapture(model, 0)
    batch = T.make_batch(0, args, enc)
    assert batch[5].shape == (1, S.NUM_FRAMES * T.TOKENS_PER_FRAME + 1, len(T.N_LM_AUX))
    loss, stats = T.train_loss(model, head, capture, batch, args, lm_head, lm_capture, enc.video_id)
    loss.backward()
    assert torch.isfinite(loss) and stats["lm_aux"] > 0
    assert lm_head.weight.grad.abs().sum() > 0
    assert model.model.language_model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0   # (zero-init branch)
    capture.handle.remove()
    lm_capture.handle.remove()


def test_answer_marks_point_at_the_letter_predictions(T, enc):
    """The answer head reads the position whose next token is the option letter, and its class is the answer."""
    args = T.parse_args(["--batch", "2", "--questions-per-video", "3"])
    ids, mask, wt, pix, aux, lm_aux, answers, *_ = T.make_batch(5, args, enc)
    assert len(answers) >= 2
    for row, pos, cls in answers.tolist():
        assert ids[row, pos] == enc.tok.convert_tokens_to_ids("(") and ids[row, pos + 1] in enc.letter_ids
        text = enc.tok.decode(ids[row, pos + 1:pos + 12])
        assert text.split(")", 1)[1].startswith(" " + T.ANSWER_CLASSES[cls])
    ids, mask, wt, answers = T.make_lookup_batch(3, args, enc, 4)
    assert len(answers) == 4
    for row, pos, cls in answers.tolist():
        assert ids[row, pos + 1] in enc.letter_ids and T.ANSWER_CLASSES[cls] in enc.tok.decode(ids[row, :pos])


def test_indirect_questions_need_the_facts(T, enc):
    """The answer is never written in the question, every stated value is an option, and the letter is right."""
    args = T.parse_args(["--indirect", "12"])
    ids, mask, wt, answers = T.make_indirect_batch(7, args, enc)
    assert len(answers) == 12
    for row, pos, cls in answers.tolist():
        text = enc.tok.decode(ids[row, :mask[row].sum()])
        context, rest = text.split("\nQuestion: ", 1)
        question = rest.split("\n", 1)[0]
        answer = T.ANSWER_CLASSES[cls]
        assert answer not in question.split() and answer in context
        options = re.findall(r"\(([A-E])\) (\w+)", rest.split("Best option:")[0])
        stated = re.findall(r"(?:is|moves|turns) (\w+)\.", context)
        assert set(stated) <= {o for _, o in options} and len(stated) >= 2
        letter = enc.tok.decode(ids[row, pos + 1:pos + 2])
        assert dict(options)[letter] == answer


def test_option_spans_find_each_options_content(T, enc):
    """The binding losses need, for each letter prediction, the content tokens of every option of its own question."""
    args = T.parse_args(["--batch", "2", "--questions-per-video", "3"])
    ids, mask, wt, pix, aux, lm_aux, answers, *_ = T.make_batch(5, args, enc)
    tok = enc.tok
    bind_tokens = T.option_tokens(tok)
    rows = ids.tolist()
    for row, pos, cls in answers.tolist():
        spans, gold = T.option_spans(rows[row], pos, bind_tokens)
        block = tok.decode(rows[row][:pos]).rsplit("Options:\n", 1)[1]
        options = re.findall(r"\(([A-E])\) ([^\n]+)", block)
        assert [tok.decode(rows[row][s[0]:s[-1] + 1]).strip() for s in spans] == [o for _, o in options]
        assert options[gold][1] == T.ANSWER_CLASSES[cls] and "ABCDE"[gold] == tok.decode(rows[row][pos + 1])


def test_binding_attention_is_the_models_attention(T, enc):
    """The supervised attention mass is recomputed from the layer's own projections: it must equal what eager
    attention reports for that head, at the letter position, on the gold option's tokens."""
    args = T.parse_args(["--size", "xs", "--bind-weight", "1", "--probe-weight", "1", "--bind-head", "1"])
    torch.manual_seed(0)
    model, _ = D.build_demo_model(enc.tok, "xs", seed=0, zero_residuals=False)
    model.set_attn_implementation("eager")
    bind = T.Binding(model, enc.tok, args)
    ids, mask, wt, answers = T.make_lookup_batch(2, args, enc, 3)
    out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    att = out.attentions[-1]                                        # (B, heads, L, L)
    rows = ids.tolist()
    want = []
    for row, pos, _ in answers.tolist():
        spans, gold = T.option_spans(rows[row], pos, bind.tokens)
        want.append(float(att[row, 1, pos, spans[gold]].sum().detach()))
    la, lp, lf, mass = bind.loss(ids, answers)
    assert mass == pytest.approx(float(np.mean(want)), rel=1e-4)
    assert la.item() == pytest.approx(float(np.mean([-np.log(w) for w in want])), rel=1e-4)
    (la + lp + lf).backward()
    assert model.model.language_model.layers[-1].self_attn.q_proj.weight.grad is not None
    assert bind.probe.weight.grad is not None and bind.flag.weight.grad is not None
    bind.handle.remove()


def test_ground_tokens_hold_the_answer(T, enc):
    """The read-out supervision points each question at video tokens whose LM-side labels say its answer."""
    sub = T.frame_subset(8)
    nC = T.CGRID ** 2
    checked, agree = set(), []
    for i in range(40):
        s = S.make_item(S.TASKS[i % len(S.TASKS)], S.item_rng(3, S.TASKS[i % len(S.TASKS)], i), extras=True)
        lab = T.lm_token_labels(s.video, sub)
        for task, q in [(s.task, s.item)] + list(s.extra.items()):
            g = T.ground_tokens(s.video, q, sub)
            text, ans = q["question"], q["answer"]
            assert all(0 <= j < lab.shape[0] or j == T.SINK for j in g) and len(set(g)) == len(g)
            if text.startswith("How many"):
                assert g == [lab.shape[0] - 1]
                if lab[-1, 6] < 5:                           # the label saturates at five
                    assert S.NUMBERS[int(lab[-1, 6]) - 1] == ans
            elif text.startswith("How does the scene"):
                assert g == list(range(len(sub) * nC - nC, len(sub) * nC))
            elif text.startswith("Is there") and ans == "no":
                assert g == [T.SINK]
            elif g:
                colours = {S.COLOR_NAMES[int(c) - 1] for c in lab[g, 0]}
                if text.startswith("Which direction"):
                    assert len({j // nC for j in g}) == 1                   # the object's last frame in ``sub``
                    motion = lab[g, 2].tolist()
                    agree.append(max(set(motion), key=motion.count) == S.DIRECTIONS.index(ans) + 1)
                elif text.startswith("Is there"):
                    assert colours == {text.split()[3]}
                else:                                                       # a colour question: the cells show it
                    assert colours == {ans}
            checked.add(task)
    assert len(checked) == 7
    assert len(agree) >= 5 and np.mean(agree) >= 0.8      # "motion so far" in sub ~ the direction over all frames


def test_grounding_attention_is_the_models_attention(T, enc):
    """The read-out loss is -log of the real attention mass of the supervised head on the answer's tokens."""
    args = T.parse_args(["--size", "xs", "--ground-weight", "1", "--ground-layer", "1", "--ground-head", "1",
                         "--batch", "2", "--frames-schedule", "4:10"])
    torch.manual_seed(0)
    model, _ = D.build_demo_model(enc.tok, "xs", zero_residuals=False, attn_implementation="eager")
    model.eval()
    g = T.Grounding(model, args)
    batch = T.make_batch(0, args, enc)
    ids, mask, pix, ground = batch[0], batch[1], batch[3], batch[7]
    assert ground
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pix, output_attentions=True)
        loss, mass, probe = g.loss(ground)
    assert probe is None                                                    # no --ground-probe-weight
    att = out.attentions[1][:, 1]                                           # (B, L, L) of the supervised head
    ref = [att[b, p, pos].sum().item() for b, p, pos, *_ in ground]
    assert abs(mass - sum(ref) / len(ref)) < 1e-4
    assert abs(loss.item() + sum(math.log(r) for r in ref) / len(ref)) < 1e-3
    # a task weight re-weights that task's questions in the loss (not the reported mass)
    heavy = [(b, p, pos, 3.0 if i % 2 else 1.0, obj) for i, (b, p, pos, _, obj) in enumerate(ground)]
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, pixel_values_videos=pix)
        loss_w, mass_w, _ = g.loss(heavy)
    wsum = sum(w for *_, w, _ in heavy)
    assert abs(mass_w - mass) < 1e-6
    assert abs(loss_w.item() + sum(w * math.log(r) for r, (*_, w, _) in zip(ref, heavy)) / wsum) < 1e-3
    g.handle.remove()


def test_ground_task_weight_option(T, enc):
    args = T.parse_args(["--size", "xs", "--ground-weight", "1", "--ground-task-weight", "object_existence:4",
                         "--batch", "4", "--frames-schedule", "4:10", "--questions-per-video", "6"])
    assert args.ground_task_weights == {"object_existence": 4.0}
    ground = T.make_batch(0, args, enc)[7]
    weights = {w for *_, w, _ in ground}
    assert weights == {1.0, 4.0}             # existence questions carry 4, the others 1
    ids = T.make_batch(0, args, enc)[0]
    for b, p, _, w, (colour, shape) in ground:
        text = enc.tok.decode(ids[b, :p])
        question = text[:text.rfind("?") + 1].rsplit("\n", 1)[-1]       # the question this letter answers
        assert ("Is there a" in question) == (w == 4.0), question
        # the probe's targets: the object the question names
        named = question.split()
        assert (colour != T.LM_AUX_IGNORE) == ("Is there a" in question or "Which direction" in question)
        if colour != T.LM_AUX_IGNORE:
            assert S.COLOR_NAMES[colour] in named and S.SHAPES[shape] in named
    for bad in ("object_existence", "no_such_task:2", "object_existence:-1", "object_existence:x"):
        with pytest.raises(SystemExit):
            T.parse_args(["--ground-task-weight", bad])


def test_position_loss_reads_row_and_column(T):
    """Patch i of the projector output is at row i // GRID, column i % GRID: features that encode exactly that,
    read by a matching head, give a loss near zero; shuffled patches do not."""
    G = T.GRID
    idx = torch.arange(G * G)
    one_hot = torch.nn.functional.one_hot
    feats = torch.cat([one_hot(idx // G, G), one_hot(idx % G, G)], -1).float()[None]     # (1, G*G, 2G)
    head = torch.nn.Linear(2 * G, 2 * G, bias=False)
    with torch.no_grad():
        head.weight.copy_(50 * torch.eye(2 * G))
    assert T.position_loss(head, feats).item() < 1e-3
    assert T.position_loss(head, feats[:, torch.randperm(G * G, generator=torch.Generator().manual_seed(0))]) > 1.0


def test_command_line_round_trips(T):
    """The recipe recorded in training.json parses back to the same training options."""
    argv = ["--out", "runs/x", "--size", "s4", "--batch", "8", "--no-bf16", "--no-eval-fixed", "--minutes", "30",
            "--frames-schedule", "4:300,8:700", "--ground-weight", "1", "--ground-task-weight", "object_existence:4",
            "--lr", "0.001", "--prune-prob", "0.5", "--prune-informed-bias", "1:3"]
    args = T.parse_args(argv)
    cmd = T.command_line(args)
    assert "--prune-informed-bias 1:3" in cmd and "-range" not in cmd     # a derived value is no option
    assert "--minutes" not in cmd and "--out" not in cmd and "--no-bf16" in cmd
    again = T.parse_args(cmd.split())
    skip = set(checkpoints._SITTING_OPTIONS)
    assert {k: v for k, v in checkpoints._plain_args(again).items() if k not in skip} == \
        {k: v for k, v in checkpoints._plain_args(args).items() if k not in skip}
    assert again.ground_task_weights == args.ground_task_weights
    # an export records the planned schedule and where the sitting stopped
    cut = T.command_line(args, steps=6800, stop_at=6450)
    assert "--steps 6800" in cut and "--stop-at 6450" in cut
    assert "--stop-at" not in T.command_line(args, steps=6800, stop_at=6800)


def test_ground_probe_reads_the_named_object(T, enc):
    """With --ground-probe-weight the read-out loss also returns the probe's cross-entropy on the named colour and
    shape; the probe is a saved, optimised head and its gradient reaches the LLM."""
    args = T.parse_args(["--size", "xs", "--ground-weight", "1", "--ground-probe-weight", "1", "--ground-layer", "1",
                         "--batch", "4", "--frames-schedule", "4:10"])
    torch.manual_seed(0)
    model, _ = D.build_demo_model(enc.tok, "xs", zero_residuals=False)
    g = T.Grounding(model, args)
    assert g.probe is not None
    batch = T.make_batch(0, args, enc)
    model(input_ids=batch[0], attention_mask=batch[1], pixel_values_videos=batch[3])
    loss, mass, probe = g.loss(batch[7])
    assert probe is not None and torch.isfinite(probe) and probe.item() > 0
    probe.backward()
    assert g.probe.weight.grad.abs().sum() > 0
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    g.handle.remove()
    assert T.question_object({"question": "How many objects appear in the video?"}) == (T.LM_AUX_IGNORE,) * 2
    assert T.question_object({"question": "What colour does the square turn into?"}) == \
        (T.LM_AUX_IGNORE, S.SHAPES.index("square"))


def test_stage1_object_purity_counts_the_share_of_a_merged_group_owned_by_the_same_object():
    path = os.path.join(os.path.dirname(__file__), "..", "data_scripts", "stage1_object_tokens.py")
    spec = importlib.util.spec_from_file_location("stage1_object_tokens", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    owner = torch.tensor([[1, 0, 0, 2]])                 # one frame, 4 tokens: object 1, background x2, object 2
    assert mod.purity(torch.tensor([[0, 1, 2, 3]]), owner) == [1.0, 1.0]       # nothing merged
    assert mod.purity(torch.tensor([[0, 0, 1, 1]]), owner) == [0.5, 0.5]       # each object averaged with bg
    assert mod.purity(torch.tensor([[0, 1, 1, 0]]), owner) == [0.5, 0.5]       # the two objects merged
    sample = S.make_item("moving_attribute", S.item_rng(5, "moving_attribute", 0))
    own = mod.object_owner(sample, S.NUM_FRAMES)
    assert own.shape == (S.NUM_FRAMES, (S.FRAME_SIZE // 16) ** 2)
    assert set(own.unique().tolist()) <= set(range(len(sample.video.tracks) + 1)) and (own > 0).any()


@pytest.fixture(scope="module")
def A():
    spec = importlib.util.spec_from_file_location(
        "average_checkpoints", os.path.join(os.path.dirname(__file__), "..", "data_scripts", "average_checkpoints.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _demo_state(enc, seed, step):
    model, _ = D.build_demo_model(enc.tok, "xs", seed=seed)
    head = torch.nn.Linear(8, 3)
    torch.nn.init.normal_(head.weight)
    return {"step": step, "model": model.state_dict(), "heads": head.state_dict(), "train_seconds": 60.0 * step,
            "torch_rng": torch.get_rng_state(), "args": {"size": "xs"}, "history": [{"step": step}],
            "optimizer": {"state": {}}}


def test_average_checkpoints_is_the_weighted_mean_and_loads_as_a_plain_model(A, enc, tmp_path):
    a, b = _demo_state(enc, 0, 10), _demo_state(enc, 1, 20)
    avg = A.average_checkpoints([a, b], [0.25, 0.75], ["a.pt", "b.pt"])
    assert "optimizer" not in avg and avg["step"] == 20 and avg["history"] == b["history"]
    assert [x["step"] for x in avg["averaged_from"]] == [10, 20] and avg["averaged_from"][0]["weight"] == 0.25
    floats = [k for k, v in a["model"].items() if v.is_floating_point()]
    assert any(not torch.equal(a["model"][k], b["model"][k]) for k in floats)
    for k in floats:
        expect = (0.25 * a["model"][k].double() + 0.75 * b["model"][k].double()).to(a["model"][k].dtype)
        assert torch.equal(avg["model"][k], expect), k
    assert torch.allclose(avg["heads"]["weight"], 0.25 * a["heads"]["weight"] + 0.75 * b["heads"]["weight"])
    # the averaged weights load into the plain architecture and survive save_pretrained / from_pretrained
    model, _ = D.build_demo_model(enc.tok, "xs", seed=2)
    model.load_state_dict(avg["model"])
    model.save_pretrained(tmp_path)
    from transformers import LlavaOnevisionForConditionalGeneration
    back = LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path)
    for k, v in back.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    # a checkpoint averaged with itself is itself (uniform weights by default)
    same = A.average_checkpoints([a, a])
    assert all(torch.equal(same["model"][k], a["model"][k]) for k in a["model"])


def test_average_checkpoints_refuses_what_cannot_be_averaged(A, enc, tmp_path):
    a, b = _demo_state(enc, 0, 10), _demo_state(enc, 1, 20)
    with pytest.raises(ValueError, match="at least two"):
        A.average_checkpoints([a])
    with pytest.raises(ValueError, match="summing to 1"):
        A.average_checkpoints([a, b], [0.5, 0.6])
    with pytest.raises(ValueError, match="different model sizes"):
        A.average_checkpoints([a, dict(b, args={"size": "s4"})])
    small = dict(b, heads={"weight": torch.zeros(2, 8), "bias": torch.zeros(2)})
    with pytest.raises(ValueError, match="shape"):
        A.average_checkpoints([a, small])
    with pytest.raises(ValueError, match="heads"):
        A.average_checkpoints([a, dict(b, pos_head={"weight": torch.zeros(1)})])
    # the command line: a missing input is named, the output may not overwrite an input
    torch.save(a, tmp_path / "a.pt")
    with pytest.raises(SystemExit):
        A.main([str(tmp_path / "a.pt"), str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")])
    torch.save(b, tmp_path / "checkpoint.pt")
    with pytest.raises(SystemExit):
        A.main([str(tmp_path / "a.pt"), str(tmp_path / "checkpoint.pt"), "--out", str(tmp_path)])
    assert A.main([str(tmp_path / "a.pt"), str(tmp_path / "a.pt"), "--out", str(tmp_path / "o")]) == 0
    assert torch.load(tmp_path / "o" / "checkpoint.pt", weights_only=False)["averaged_from"][1]["weight"] == 0.5


def test_task_mix_reweights_the_training_videos(T, enc):
    """--task-mix draws the videos' tasks with the given weights; without it the batches are the uniform draw of
    S.sample, so earlier runs replay unchanged."""
    plain = T.parse_args(["--batch", "4", "--size", "xs", "--questions-per-video", "1"])
    mixed = T.parse_args(["--batch", "4", "--size", "xs", "--questions-per-video", "1",
                          "--task-mix", "moving_direction:1", *sum((["--task-mix", f"{t}:0"] for t in S.TASKS
                                                                    if t != "moving_direction"), [])])
    assert mixed.task_mix_weights["moving_direction"] == 1 and "--task-mix" in T.command_line(mixed)
    for step in range(3):
        ids, *_ = T.make_batch(step, mixed, enc)
        for row in ids.tolist():
            assert "Which direction does the" in enc.tok.decode(row), step
    ids_plain = T.make_batch(1, plain, enc)[0]
    again = T.make_batch(1, T.parse_args(["--batch", "4", "--size", "xs", "--questions-per-video", "1"]), enc)[0]
    assert torch.equal(ids_plain, again)
    questions = {enc.tok.decode(r).split("Question:")[1][:20] for r in ids_plain.tolist()}
    assert len(questions) > 1                                 # uniform: not all one task
    with pytest.raises(SystemExit):
        T.parse_args(["--task-mix", "moving_direction"])
    with pytest.raises(SystemExit):
        T.parse_args([*sum((["--task-mix", f"{t}:0"] for t in S.TASKS), [])])


def test_track_tokens_pair_each_later_cell_with_the_objects_first_cells(T):
    """Every tracked token is an object's cell after its first frame; its targets are that object's cells in its
    first frame (same object by the LM-side labels), and the probe's centre is where those cells are."""
    sub = T.frame_subset(8)
    nC = T.CGRID ** 2
    n, motion_agree = 0, []
    for i in range(12):
        task = ("moving_direction", "state_change", "appearance_order")[i % 3]
        s = S.make_item(task, S.item_rng(5, task, i))
        lab = T.lm_token_labels(s.video, sub)
        for q, targets, (r, c) in T.track_tokens(s.video, sub):
            n += 1
            frames = {j // nC for j in targets}
            assert len(frames) == 1 and q // nC > frames.pop() and q not in targets
            assert {int(lab[j, 1]) for j in targets} == {int(lab[q, 1])} != {0}          # same shape, an object
            assert abs(r - np.mean([(j % nC) // T.CGRID for j in targets])) <= 0.5
            assert abs(c - np.mean([j % T.CGRID for j in targets])) <= 0.5
            m = int(lab[q, 2])
            if m in (1, 2):                        # left / right so far: the query's column moved that way
                motion_agree.append((q % T.CGRID - c > 0) == (m == 2) or q % T.CGRID == c)
    assert n > 100 and np.mean(motion_agree) > 0.9
    still = S.make_item("object_count", S.item_rng(5, "object_count", 0)).video
    for q, targets, _ in T.track_tokens(still, sub):
        assert q // nC > targets[0] // nC


def test_tracking_attention_is_the_models_attention(T, enc):
    """The tracking loss is -log of the real attention mass of the supervised head from each tracked token on its
    object's first cells; the probe is a trained head whose gradient reaches the LLM; off by default."""
    assert T.make_batch(0, T.parse_args(["--size", "xs", "--batch", "2", "--frames-schedule", "4:10"]), enc)[8] == []
    args = T.parse_args(["--size", "xs", "--track-weight", "1", "--track-layer", "1", "--track-head", "1",
                         "--track-probe-weight", "1", "--track-queries", "5", "--batch", "2",
                         "--frames-schedule", "4:10"])
    torch.manual_seed(0)
    model, _ = D.build_demo_model(enc.tok, "xs", zero_residuals=False, attn_implementation="eager")
    tr = T.Tracking(model, args)
    batch = T.make_batch(0, args, enc)
    ids, mask, pix, track = batch[0], batch[1], batch[3], batch[8]
    assert track and all(len(q) <= 5 and len(q) == len(g) == len(c) for _, q, g, c in track)
    out = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pix, output_attentions=True)
    loss, mass, probe = tr.loss(track)
    att = out.attentions[1][:, 1].detach()                                 # (B, L, L) of the supervised head
    ref = [att[b, p, g].sum().item() for b, qs, gs, _ in track for p, g in zip(qs, gs)]
    assert abs(mass - sum(ref) / len(ref)) < 1e-4
    assert abs(loss.item() + sum(math.log(r) for r in ref) / len(ref)) < 1e-3
    (loss + probe).backward()
    assert tr.probe.weight.grad.abs().sum() > 0
    assert model.model.language_model.layers[1].self_attn.k_proj.weight.grad.abs().sum() > 0
    tr.remove()
    assert tr.take() == (None, None, None)


def test_motion_weight_scales_only_the_motion_target(T, enc):
    args = T.parse_args(["--size", "xs", "--lm-aux-weight", "1", "--lm-aux-layer", "0", "--batch", "2",
                         "--frames-schedule", "4:10", "--no-bf16"])
    args.paren_id, args.letter_ids = enc.tok.convert_tokens_to_ids("("), enc.letter_ids
    torch.manual_seed(0)
    model, _ = D.build_demo_model(enc.tok, "xs", zero_residuals=False)
    model.eval()
    hidden = model.config.text_config.hidden_size
    aux_head = torch.nn.Linear(hidden, sum(T.N_AUX))
    lm_head = torch.nn.Linear(hidden, sum(T.N_LM_AUX))
    batch = T.make_batch(0, args, enc)
    got = {}
    for w in (1.0, 3.0):
        args.motion_weight = w
        capture, lm_capture = T.AuxCapture(model), T.LayerCapture(model, 0)
        with torch.no_grad():
            _, stats = T.train_loss(model, aux_head, capture, batch, args, lm_head, lm_capture, enc.video_id)
        got[w] = stats["lm_aux"]
        capture.handle.remove()
        lm_capture.handle.remove()
    # the motion cross-entropy itself, from the same hidden states
    lm_capture = T.LayerCapture(model, 0)
    with torch.no_grad():
        model(input_ids=batch[0], attention_mask=batch[1], pixel_values_videos=batch[3])
        lab = batch[5]
        hs = lm_capture.out[batch[0] == enc.video_id].view(lab.shape[0], lab.shape[1], -1)
        z = torch.split(lm_head(hs), list(T.N_LM_AUX), dim=-1)[T.LM_AUX_MOTION]
        ce = torch.nn.functional.cross_entropy(z.reshape(-1, 5), lab[..., T.LM_AUX_MOTION].reshape(-1),
                                               ignore_index=T.LM_AUX_IGNORE).item()
    lm_capture.handle.remove()
    assert ce > 0 and abs((got[3.0] - got[1.0]) - 2 * ce) < 1e-3 * max(1.0, ce)


def test_ordinal_position_loss_wants_one_direction_per_axis(T):
    """Row and column as two scalars in [-1, 1]: features that hold exactly those give zero loss; the categorical
    code of position_loss (one direction per row) read by the same 2-output head does not."""
    G = T.GRID
    idx = torch.arange(G * G)
    ordinal = (torch.stack([idx // G, idx % G], -1).float() * (2.0 / (G - 1)) - 1.0)[None]     # (1, G*G, 2)
    head = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    assert T.ordinal_position_loss(head, ordinal).item() < 1e-10
    assert T.ordinal_position_loss(head, ordinal.flip(-1)).item() > 0.1


_SHIP = os.path.join(os.path.dirname(__file__), "..", "data_scripts", "ship_demo_model.py")


def test_ship_card_only_rewrites_the_card_of_the_shipped_weights_and_refuses_others(enc, tmp_path):
    """--card-only rebuilds the model card (notes appended, numbers from eval.json) and the training log without
    evaluating; weights other than the shipped ones are refused."""
    from prunevid import models
    if not os.path.isfile(os.path.join(models.DEMO_MODEL_DIR, "eval.json")):
        pytest.skip("no shipped demo model")
    spec = importlib.util.spec_from_file_location("ship_demo_model", _SHIP)
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    dest, run = tmp_path / "dest", tmp_path / "run"
    shutil.copytree(models.DEMO_MODEL_DIR, dest)
    (run / "model").mkdir(parents=True)
    for name in ("model.safetensors", "training.json"):
        shutil.copy2(dest / name, run / "model" / name)
    (run / "log.jsonl").write_text(json.dumps({"step": 10, "train_minutes": 1.0, "accuracy": 0.5}) + "\n")
    (tmp_path / "notes.md").write_text("## Hand-written\n\nA note.\n")
    (dest / "README.md").write_text("old card\n")
    assert ship.main(["--run", str(run), "--dest", str(dest), "--card-only", "--notes", str(tmp_path / "notes.md")]) == 0
    card = (dest / "README.md").read_text()
    with open(dest / "eval.json") as f:
        acc = json.load(f)["test"]["accuracy"]
    assert f"**{acc:.1f}%**" in card and card.rstrip().endswith("A note.") and "| 10 | 1.0 | 50.0 |" in card
    assert (dest / "training_log.jsonl").read_text() == (run / "log.jsonl").read_text()
    with open(run / "model" / "model.safetensors", "ab") as f:
        f.write(b"0")
    with pytest.raises(SystemExit, match="not the ones shipped"):
        ship.main(["--run", str(run), "--dest", str(dest), "--card-only"])


def test_ship_names_the_splits_of_the_world_the_model_was_trained_on():
    """--version N ships against synthetic-v<N>-val (the layer sweep) and synthetic-v<N> (the test split); the card
    says which; version 1 keeps its names; an unknown version is refused."""
    spec = importlib.util.spec_from_file_location("ship_demo_model", _SHIP)
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    assert ship.split_names(1) == ("synthetic-val", "synthetic")
    assert ship.split_names(3) == ("synthetic-v3-val", "synthetic-v3")
    with pytest.raises(ValueError, match="unknown synthetic benchmark version"):
        ship.split_names(7)
    ev = {"accuracy": 86.0, "n": 2100, "by_category": {t: 86.0 for t in S.TASKS}}
    training = {"command": "--version 3", "args": {"size": "s8"}, "step": 10}
    card = ship.model_card(training, [], ev, {"none": {"accuracy": 85.0}}, 2, {}, version=3)
    assert "--benchmark synthetic-v3 --model demo" in card and "`synthetic-v3-val`" in card
    assert "version 3 of its world" in card
    old = ship.model_card(training, [], ev, {"none": {"accuracy": 85.0}}, 2, {})
    assert "--benchmark synthetic --model demo" in old and "`synthetic-val`" in old and "of its world" not in old


def test_ship_verdict_uses_the_bars_of_the_model_s_world():
    """Version 1 keeps its target and fallback; a model of a later world is held to issue 24's bars: 85% overall,
    every task 15 points above chance, moving direction >= 70%."""
    spec = importlib.util.spec_from_file_location("ship_demo_model", _SHIP)
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)

    def ev(overall, **task):
        return {"accuracy": overall, "by_category": {t: task.get(t, 90.0) for t in S.TASKS}}

    assert ship.verdict(ev(86.0), 3).startswith("meets the target")
    assert ship.verdict(ev(84.9), 3).startswith("below the target")
    assert ship.verdict(ev(86.0, moving_direction=69.0), 3).startswith("below the target")
    assert ship.verdict(ev(86.0, object_existence=64.0), 3).startswith("below the target")      # chance 50: +14
    assert ship.verdict(ev(86.0, object_existence=65.0), 3).startswith("meets the target")
    # version 1: every task above chance is enough at 85%, and 70% with 15-point margins is the fallback
    assert ship.verdict(ev(86.0, object_existence=55.0), 1).startswith("meets the target")
    assert ship.verdict(ev(75.0, object_existence=65.0), 1).startswith("meets the fallback")


# ---------------------------------------------------------------------------------------------------------------
# Pruned input (issue 24): the demo model trains on subsets of its video tokens
# ---------------------------------------------------------------------------------------------------------------

def _video_batch(T, enc, extra=(), step=3):
    args = T.parse_args(["--batch", "2", "--version", "2", "--lm-aux-weight", "0.5", "--ground-weight", "1",
                         "--track-weight", "1", *extra])
    args.paren_id, args.letter_ids = enc.tok.convert_tokens_to_ids("("), enc.letter_ids
    return args, T.make_batch(step, args, enc)


def test_pruned_forward_keeping_every_token_is_the_plain_forward(T, enc):
    """The invariant of the augmentation: with nothing dropped, the pruned path is the model's own forward, bit for
    bit, under either position rule (original positions of a full sequence are 0..L-1)."""
    torch.manual_seed(0)
    model, _ = D.build_demo_model(enc.tok, "xs", seed=0, zero_residuals=False)
    model.eval()
    _, (ids, mask, _, pix, *_) = _video_batch(T, enc)
    keep = torch.arange(T.N_VIDEO).expand(2, -1)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pix).logits
        for original in (False, True):
            out, ids2, sel, newpos = T.pruned_forward(model, ids, mask, pix, enc.video_id,
                                                      T.PrunePlan(keep=keep, original_positions=original))
            assert torch.equal(out.logits, ref) and torch.equal(ids2, ids)
            assert torch.equal(sel, torch.arange(ids.shape[1]).expand(2, -1)) and torch.equal(newpos, sel)


def test_pruned_forward_feeds_the_kept_tokens_at_the_chosen_positions(T, enc):
    """Dropping tokens: the language model sees exactly the kept video features (merged: the mean of each kept
    token and the dropped ones most similar to it), at re-numbered or original positions."""
    torch.manual_seed(0)
    model, _ = D.build_demo_model(enc.tok, "xs", seed=0, zero_residuals=False)
    model.eval()
    _, (ids, mask, _, pix, *_) = _video_batch(T, enc)
    keep = T.random_keep(np.random.default_rng(0), 2, T.N_VIDEO, 0.25)
    assert keep.shape == (2, round(0.25 * (T.N_VIDEO - 1)) + 1) and (keep[:, -1] == T.N_VIDEO - 1).all()
    seen = {}
    lm = model.model.language_model
    h = lm.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    with torch.no_grad():
        cfg = model.config
        vf = model.model.get_video_features(pix, vision_feature_layer=cfg.vision_feature_layer,
                                            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                                            return_dict=True).pooler_output
        for merge in (False, True):
            for original in (False, True):
                plan = T.PrunePlan(keep=keep, merge=merge, original_positions=original)
                out, ids2, sel, newpos = T.pruned_forward(model, ids, mask, pix, enc.video_id, plan)
                start = int((ids[0] == enc.video_id).nonzero()[0])
                n_keep = keep.shape[1]
                assert ids2.shape[1] == ids.shape[1] - T.N_VIDEO + n_keep
                assert int((ids2 == enc.video_id).sum(1)[0]) == n_keep
                emb = seen["inputs_embeds"]
                for b in range(2):
                    got = emb[b, start:start + n_keep]
                    if not merge:
                        assert torch.equal(got, vf[b, keep[b]])
                    else:       # each kept frame token is the mean of itself and the dropped tokens merged into it
                        dropped = sorted(set(range(T.N_VIDEO)) - set(keep[b].tolist()))
                        k = vf[b, keep[b, :-1]]
                        sim = torch.nn.functional.normalize(vf[b, dropped], dim=-1) @ \
                            torch.nn.functional.normalize(k, dim=-1).T
                        tgt = sim.argmax(1)
                        for j in range(n_keep - 1):
                            members = torch.cat([k[j:j + 1], vf[b, dropped][tgt == j]])
                            assert torch.allclose(got[j], members.mean(0), atol=1e-5)
                        assert torch.equal(got[-1], vf[b, -1])          # the newline token takes no merges
                    # the text after the video is the same tokens, shifted left by the dropped count
                    assert torch.equal(ids2[b, start + n_keep:], ids[b, start + T.N_VIDEO:])
                pos = seen["position_ids"]
                if original:
                    assert torch.equal(pos, sel) and int(pos[0, start + n_keep]) == start + T.N_VIDEO
                else:
                    assert torch.equal(pos[0], torch.arange(ids2.shape[1]))
                assert torch.equal(seen["attention_mask"], mask.gather(1, sel))
    h.remove()


def test_remapped_labels_point_at_the_same_tokens(T, enc):
    """Every position-indexed label follows its token into the pruned sequence; labels on dropped tokens go."""
    args, batch = _video_batch(T, enc)
    ids, mask, wt, pix, aux, lm_aux, answers, ground, track, _ = batch
    assert ground and track
    keep = T.random_keep(np.random.default_rng(1), 2, T.N_VIDEO, 0.3)
    start = int((ids[0] == enc.video_id).nonzero()[0])
    sel = torch.stack([torch.cat([torch.arange(start), start + keep[b], torch.arange(start + T.N_VIDEO, ids.shape[1])])
                       for b in range(2)])
    newpos = torch.full(ids.shape, -1, dtype=torch.long)
    newpos.scatter_(1, sel, torch.arange(sel.shape[1]).expand(2, -1).contiguous())
    a2, lm2, g2, t2 = T.remap_labels(newpos, keep, answers, lm_aux, ground, track)
    kept_pos = {b: set((start + keep[b]).tolist()) for b in range(2)}
    for (b, p, c), (b2, p2, c2) in zip(answers.tolist(), a2.tolist()):
        assert (b, c) == (b2, c2) and int(sel[b, p2]) == p
    assert torch.equal(lm2, torch.stack([lm_aux[b, keep[b]] for b in range(2)]))
    want = [(b, p, [i for i in pos if i in kept_pos[b] or i == 0]) for b, p, pos, _, _ in ground]
    want = [w for w in want if w[2]]
    assert [(b, int(sel[b, p]), [int(sel[b, i]) for i in pos]) for b, p, pos, _, _ in g2] == want
    for b, queries, targets, _ in t2:
        assert all(int(sel[b, q]) in kept_pos[b] for q in queries)
        assert all(int(sel[b, j]) in kept_pos[b] for tg in targets for j in tg) and all(targets)
    n_before = sum(len(q) for _, q, _, _ in track)
    n_after = sum(len(q) for _, q, _, _ in t2)
    assert 0 < n_after < n_before


def test_a_pruned_training_step_runs_every_loss(T, enc):
    args, batch = _video_batch(T, enc, ["--prune-prob", "1", "--size", "xs", "--answer-aux-weight", "0.5"])
    plan = batch[9]
    assert plan is not None and plan.keep.shape[1] < T.N_VIDEO
    torch.manual_seed(0)
    model, _ = D.build_demo_model(enc.tok, "xs", seed=0)
    model.train()
    hidden = model.config.text_config.hidden_size
    head, lm_head = torch.nn.Linear(hidden, sum(T.N_AUX)), torch.nn.Linear(hidden, sum(T.N_LM_AUX))
    capture, lm_capture = T.AuxCapture(model), T.LayerCapture(model, 0)
    ans_head, ans_capture = torch.nn.Linear(hidden, len(T.ANSWER_CLASSES)), T.LayerCapture(model, 0)
    loss, stats = T.train_loss(model, head, capture, batch, args, lm_head, lm_capture, enc.video_id, ans_head,
                               ans_capture, grounding=T.Grounding(model, args), tracking=T.Tracking(model, args))
    loss.backward()
    assert torch.isfinite(loss) and {"lm", "letter", "aux", "lm_aux", "answer", "ground_mass", "track_mass"} <= set(stats)
    assert model.model.multi_modal_projector.linear_1.weight.grad is not None and lm_head.weight.grad is not None


def test_pruning_draws_leave_the_batches_of_older_recipes_unchanged(T, enc):
    """The plans come from their own stream: switching --prune-prob on changes no earlier part of a batch."""
    _, a = _video_batch(T, enc, step=11)
    _, b = _video_batch(T, enc, ["--prune-prob", "1"], step=11)
    assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(a[:7], b[:7])) and a[7:9] == b[7:9]
    assert a[9] is None and b[9] is not None
    plans = [_video_batch(T, enc, ["--prune-prob", "0.5", "--prune-retain", "0.2:0.4"], step=s)[1][9]
             for s in range(12)]
    assert 0 < sum(p is None for p in plans) < 12          # about half the batches are pruned
    for p in plans:
        if p is not None:
            assert round(0.2 * 784) <= p.keep.shape[1] - 1 <= round(0.4 * 784)


def test_object_first_keep_is_the_oracle_selector(T):
    cov = np.zeros(20)
    cov[[3, 7, 11]] = [0.2, 0.9, 0.5]
    keep = T.object_first_keep(np.random.default_rng(0), [cov], 0.25)[0].tolist()
    assert keep[-1] == 20 and len(keep) == 6 and {3, 7, 11} <= set(keep[:-1]) and keep[:-1] == sorted(keep[:-1])
    keep = T.object_first_keep(np.random.default_rng(0), [cov], 0.1)[0].tolist()
    assert keep == [7, 11, 20]                              # the most covered first


def test_pruning_options_are_checked(T):
    for bad in (["--prune-retain", "0.5"], ["--prune-retain", "0:0.5"], ["--prune-retain", "0.6:0.5"],
                ["--prune-prob", "1.5"], ["--eval-pruned", "topk:0.25:original"],
                ["--eval-pruned", "random:0.25:shifted"], ["--eval-pruned", "random:2:original"]):
        with pytest.raises(SystemExit):
            T.parse_args(bad)
    args = T.parse_args(["--eval-pruned", "oracle:0.25:original", "--prune-retain", "0.2:0.6"])
    assert args.eval_pruned_specs == [("oracle", 0.25, "original")] and args.prune_retain_range == (0.2, 0.6)
    # the recorded command keeps the options as typed
    cmd = T.command_line(args)
    assert "--prune-retain 0.2:0.6" in cmd and "--eval-pruned oracle:0.25:original" in cmd
    assert T.parse_args(cmd.split()).prune_retain_range == (0.2, 0.6)


def test_a_grown_model_computes_what_its_source_did(T, enc, tmp_path):
    """--init-from with a deeper --size: the source's LLM layers spread over the new depth, the others start as the
    identity, so the grown model's logits are the source's."""
    torch.manual_seed(0)
    src, _ = D.build_demo_model(enc.tok, "s4", seed=3, zero_residuals=False)
    dst, _ = D.build_demo_model(enc.tok, "s8", seed=4)
    sd = T.grow_state_dict(src.state_dict(), 4, 8)
    assert T.source_layers(src.state_dict()) == 4
    assert "model.language_model.layers.6.mlp.down_proj.weight" in sd
    assert "model.language_model.layers.7.mlp.down_proj.weight" not in sd
    missing, unexpected = dst.load_state_dict(sd, strict=False)
    assert not unexpected and missing and all(k.split(".")[3] in ("1", "3", "5", "7") for k in missing)
    src.eval(), dst.eval()
    _, (ids, mask, _, pix, *_) = _video_batch(T, enc)
    with torch.no_grad():
        a = src(input_ids=ids, attention_mask=mask, pixel_values_videos=pix).logits
        b = dst(input_ids=ids, attention_mask=mask, pixel_values_videos=pix).logits
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError):
        T.grow_state_dict(src.state_dict(), 4, 2)


def test_held_out_evaluation_on_pruned_and_blind_input(T, enc):
    """--version 2 evaluates on version-2 val items; --eval-pruned runs the same items on a subset of their tokens
    (the oracle keeps every object-covered token first); --eval-blind answers without the video, so which video
    an item carries cannot change its prediction."""
    args = T.parse_args(["--version", "2", "--eval-n", "1", "--eval-pruned", "oracle:0.25:original", "--eval-blind",
                         "--eval-pruned", "question:0.25:renumber"])
    items = T.make_eval_set(args)
    v2 = S.make_item("moving_direction", S.item_rng(S.split_seeds(2)["val"], "moving_direction", 0), version=2)
    assert items[0][1] == v2.item and np.array_equal(items[0][2], v2.frames)
    cov = items[0][3]["oracle"]
    assert cov.shape == (S.NUM_FRAMES * 49,) and 0 < (cov > 0).mean() < 0.5
    # the question focus is the kit oracle's key on the same cells: the mover's tokens (score > 2) are a subset of
    # the object tokens; a scene transition ranks the background first
    q = items[0][3]["question"]
    assert q.shape == cov.shape and 0 < (q > 2).sum() < (cov > 0).sum() and ((q > 2) <= (cov > 0)).all()
    scene = next(r for t, _, _, r in items if t == "scene_transition")
    assert ((scene["question"] > 2) == (scene["oracle"] < 1)).all()
    with pytest.raises(SystemExit):
        T.parse_args(["--eval-n", "1", "--eval-pruned", "question:0.25:renumber"])
    v1 = T.parse_args(["--eval-n", "1"])
    v1.eval_pruned_specs = [("question", 0.25, "renumber")]
    with pytest.raises(ValueError, match="--version 2"):
        T.make_eval_set(v1)
    torch.manual_seed(0)
    model, _ = D.build_demo_model(enc.tok, "xs", seed=0, zero_residuals=False)
    items = items[:4]
    swapped = [(t, q, items[(i + 1) % 4][2], c) for i, (t, q, _, c) in enumerate(items)]
    seen = []
    h = model.register_forward_hook(lambda m, a, kw, out: seen.append(out.logits[:, -1].clone()), with_kwargs=True)
    a = T.evaluate(model, enc, items, args, blind=True)
    b = T.evaluate(model, enc, swapped, args, blind=True)
    assert a == b and torch.equal(seen[0], seen[1])
    r = T.evaluate(model, enc, items, args, pruned=("oracle", 0.25, "original"))
    rq = T.evaluate(model, enc, items, args, pruned=("question", 0.25, "renumber"))
    h.remove()
    assert r["n"] == rq["n"] == 4 and 0 <= r["accuracy"] <= 1


def test_object_biased_plans_go_from_random_to_the_oracle(T, enc):
    """--prune-informed-prob: weighted_keep at bias 0 is a uniform draw, at a huge bias the oracle's object-first
    set; the informed draws leave the plans of runs without the option unchanged."""
    cov = np.zeros(40)
    cov[:4] = [1.0, 0.8, 0.6, 0.3]
    rng = np.random.default_rng(0)
    strong = T.weighted_keep(rng, [cov] * 50, 0.1, 1e9)
    assert all(set(r[:-1].tolist()) == {0, 1, 2, 3} for r in strong)
    hits = [len({0, 1, 2, 3} & set(r[:-1].tolist())) for r in T.weighted_keep(rng, [cov] * 400, 0.1, 0.0)]
    assert abs(np.mean(hits) - 0.4) < 0.15                  # 4 of 40 tokens, 4 drawn: 0.4 expected
    mid = [len({0, 1, 2, 3} & set(r[:-1].tolist())) for r in T.weighted_keep(rng, [cov] * 400, 0.1, 20.0)]
    assert 0.4 < np.mean(mid) < 4.0
    # the stream: without the option the plans are what they were; with it, its extra draws come after the others
    base = _video_batch(T, enc, ["--prune-prob", "1"], step=2)[1][9]
    informed = _video_batch(T, enc, ["--prune-prob", "1", "--prune-informed-prob", "1"], step=2)[1][9]
    assert informed.keep.shape == base.keep.shape
    assert (informed.merge, informed.original_positions) == (base.merge, base.original_positions)
    assert not torch.equal(informed.keep, base.keep)
    # --prune-informed-bias sets the bias's log10 range: at 6:6 every informed row keeps all object tokens (4 of
    # 40, k = 10), at 0:0 (bias 1: weights 1..2) far fewer on average; the range is checked
    cov_rows = [cov] * 30
    def kept_objects(spec):
        a = T.parse_args(["--prune-prob", "1", "--prune-retain", "0.25:0.25", "--prune-informed-prob", "1",
                          "--prune-informed-bias", spec])
        plans = [T.draw_plan(np.random.default_rng(s), 30, 41, a, cov_rows) for s in range(5)]
        return [len({0, 1, 2, 3} & set(r[:-1].tolist())) for p in plans for r in p.keep]
    assert set(kept_objects("6:6")) == {4}
    assert np.mean(kept_objects("0:0")) < 2.5
    with pytest.raises(SystemExit):
        T.parse_args(["--prune-informed-bias", "3:1"])


def test_vision_only_trains_the_tower_alone_resumes_and_hands_over_to_a_joint_run(T, tmp_path):
    """--vision-only: the tower, the projector and the per-patch head change, every language-model weight stays
    bit-identical; the run evaluates the object-patch shape read on val existence videos, resumes like any run, a
    joint command refuses its checkpoint, and a joint run starts from it with --init-from."""
    out = tmp_path / "vision"
    base = ["--size", "xs", "--batch", "2", "--no-bf16", "--eval-n", "2", "--eval-every", "2", "--log-every", "1",
            "--version", "3", "--lr", "1e-2", "--warmup", "1", "--pos-weight", "1", "--pos-ordinal-weight", "1"]
    start = T.parse_args(["--size", "xs"])
    model0, _ = D.build_demo_model(D.build_demo_tokenizer(), "xs", seed=start.seed)
    assert T.main(base + ["--out", str(out), "--vision-only", "--shape-weight", "1", "--steps", "3"]) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["step"] == 3 and state["args"]["vision_only"]
    before = model0.state_dict()
    changed = {k for k, v in state["model"].items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("model.vision_tower.", "model.multi_modal_projector.")) for k in changed)
    assert any(k.startswith("model.vision_tower.") for k in changed)
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    assert [r["step"] for r in log] == [2, 3]
    v = log[-1]["vision"]
    assert v["n"] == 2 and v["object_patches"] > 0 and 0 <= v["shape_accuracy"] <= 1 and v["shape"] > 0
    assert {"aux", "shape", "shape_accuracy", "position", "position_ordinal"} <= set(log[-1]["loss"])
    assert v["position"] > 0 and v["position_ordinal"] > 0
    # the position heads are trained with it (they read the same features); the ordinal one starts at zero
    assert state["pos_ord_head"]["weight"].abs().sum() > 0
    # resumes from its checkpoint
    assert T.main(base + ["--out", str(out), "--vision-only", "--shape-weight", "1", "--steps", "4"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 4
    # a joint command cannot continue it
    with pytest.raises(SystemExit, match="--init-from"):
        T.main(base + ["--out", str(out), "--steps", "5"])
    with pytest.raises(SystemExit):
        T.parse_args(["--vision-only"])                   # nothing to train on without the shape loss
    # a joint run starts from it (--export writes the model it starts with, untrained)
    from transformers import LlavaOnevisionForConditionalGeneration
    vis = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    joint = tmp_path / "joint"
    assert T.main(base + ["--out", str(joint), "--init-from", str(out / "checkpoint.pt"), "--export",
                          "--no-eval-fixed"]) == 0
    got = LlavaOnevisionForConditionalGeneration.from_pretrained(str(joint / "model")).state_dict()
    assert set(got) == set(vis) and all(torch.equal(got[k], vis[k]) for k in vis)


def test_the_kept_version3_state_loads_into_its_model_and_matches_its_curve(T):
    """data_scripts/demo_checkpoint/v3/: the slim state fits the 8-layer demo model exactly, is a joint run's (a
    sitting continues it without --vision-only), and its held-out history ends where the kept curve does."""
    root = os.path.join(os.path.dirname(__file__), "..", "data_scripts", "demo_checkpoint", "v3")
    state = torch.load(os.path.join(root, "checkpoint.pt"), weights_only=False, map_location="cpu")
    assert "optimizer" not in state and not state["args"].get("vision_only")
    model, _ = D.build_demo_model(D.build_demo_tokenizer(), state["args"]["size"], seed=0)
    model.load_state_dict(state["model"])                    # strict: every key, every shape
    with open(os.path.join(root, "log-joint.jsonl")) as f:
        curve = [json.loads(line) for line in f if line.strip()]
    assert curve[-1]["step"] == state["step"] == state["history"][-1]["step"]
    assert curve[-1]["accuracy"] == state["history"][-1]["accuracy"]
    with open(os.path.join(root, "log-vision.jsonl")) as f:
        vision = [json.loads(line) for line in f if line.strip()]
    assert all("vision" in r for r in vision) and vision[-1]["vision"]["object_patches"] > 0
