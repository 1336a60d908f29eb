"""`camelid` command line: a thin shell over the Python API. Each subcommand parses, calls, prints."""

from __future__ import annotations

import argparse
import json
import math
import sys

from camelid import __version__
from camelid import cli_types as T
from camelid.errors import CamelidError


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2))


# --- checkpoint: info, convert, recover, make-diff ----------------------------------------------------------


def _cmd_info(args: argparse.Namespace) -> int:
    from camelid.checkpoint import info

    summary = info(args.model, revision=args.revision)
    if summary["quantization"] is not None:
        from camelid.runtime import plan_kernels

        # The kernel each quantized layer would run on, decided from shapes alone (nothing is unpacked).
        summary["kernels"] = plan_kernels(args.model, revision=args.revision, device=args.device,
                                          kernel=args.kernel)
    if args.json:
        _print_json(summary)
        return 0
    cfg, tok, quant = summary["config"], summary["tokenizer"], summary["quantization"]
    print(f"model:        {summary['path']}")
    print(f"architecture: {summary['architecture']} ({summary['model_type']})")
    print(f"parameters:   {summary['parameters']:,} in {summary['tensors']} tensors")
    print("dtypes:       " + ", ".join(f"{k} ({v:,})" for k, v in summary["dtypes"].items()))
    print(f"on disk:      {summary['size_on_disk'] / 1e6:,.1f} MB, {summary['format']}, "
          f"{len(summary['weight_files'])} weight file(s)")
    print("config:       " + ", ".join(f"{k}={v}" for k, v in cfg.items()))
    print(f"tokenizer:    {'none' if tok is None else (tok['class'] or '?') + ' ' + ', '.join(tok['files'])}"
          + (" (chat template)" if tok and tok["chat_template"] else ""))
    print(f"quantization: {'none' if quant is None else json.dumps(quant)}")
    if "kernels" in summary:
        plan = summary["kernels"]
        print(f"kernels:      {json.dumps(plan['kernels'])} on {plan['device']}"
              + (f"; not faster: {json.dumps(plan['not_faster'])}" if plan.get("not_faster") else ""))
        if "cpu" in plan:
            cpu = plan["cpu"]
            print(f"cpu:          {cpu['cpu']['model']}, ISA level {cpu['cpu']['isa']}"
                  + (" (forced by CAMELID_CPU_ISA)" if cpu["cpu"]["isa_forced"] else "")
                  + f"; C++ kernels: {cpu['cpp_kernels'] or 'not used, ' + str(cpu['cpp_kernels_unavailable'])}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from camelid.checkpoint import convert

    out = convert(args.src, args.out, dtype=args.dtype, max_shard_size=args.max_shard_size,
                  overwrite=args.overwrite, revision=args.revision)
    print(f"wrote {out}")
    return 0


def _cmd_recover(args: argparse.Namespace) -> int:
    from camelid.diff import recover

    out = recover(args.base, args.diff, args.out, dtype=args.dtype, check_sum=args.check_sum,
                  max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    print(f"wrote {out}" + (" (integrity check passed)" if args.check_sum is not None else ""))
    return 0


def _cmd_make_diff(args: argparse.Namespace) -> int:
    from camelid.diff import make_diff

    out = make_diff(args.base, args.tuned, args.out, dtype=args.dtype, max_shard_size=args.max_shard_size,
                    overwrite=args.overwrite, exact=not args.allow_inexact)
    print(f"wrote {out}")
    return 0


def _add_checkpoint_commands(sub: argparse._SubParsersAction) -> None:
    dtypes = ["float16", "bfloat16", "float32"]

    def writer_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--max-shard-size", default="5GB", type=T.size, help="largest safetensors shard (default 5GB)")
        p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")

    p = sub.add_parser("info", help="architecture, parameters, dtypes, size, tokenizer, quantization of a model")
    p.add_argument("model", help="model folder or Hub repo id")
    p.add_argument("--revision", help="Hub branch, tag or commit")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--device", default="auto", help="device whose kernels to report for a GPTQ model")
    p.add_argument("--kernel", default="auto", choices=["auto", "q4x8", "int4", "int8", "dense"],
                   help="report as if this kernel were forced")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("convert", help="cast a model's floating-point weights (e.g. to float16), streamed")
    p.add_argument("src", help="model folder or Hub repo id")
    p.add_argument("out", help="output folder")
    p.add_argument("--dtype", default="float16", choices=dtypes)
    p.add_argument("--revision", help="Hub branch, tag or commit of SRC")
    writer_options(p)
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("recover", help="rebuild fine-tuned weights from a weight diff: tuned = base + diff")
    p.add_argument("--base", required=True, help="base model folder (e.g. LLaMA in HF format)")
    p.add_argument("--diff", required=True, help="weight diff folder (its tokenizer and config are used)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dtype", default="float16", choices=dtypes, help="output dtype (sums are done in fp32)")
    p.add_argument("--check-sum", type=T.finite_float, help="Alpaca integrity value: expected sum of all recovered weights")
    writer_options(p)
    p.set_defaults(func=_cmd_recover)

    p = sub.add_parser("make-diff", help="write diff = tuned - base, the inverse of recover")
    p.add_argument("--base", required=True, help="base model folder")
    p.add_argument("--tuned", required=True, help="fine-tuned model folder (its tokenizer and config are used)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dtype", default="float32", choices=dtypes,
                   help="diff dtype; float32 (default) recovers tuned bit for bit, float16/bfloat16 are lossy")
    p.add_argument("--allow-inexact", action="store_true",
                   help="keep every tensor float32 like open-instruct, instead of float64 where needed for "
                        "a bit-exact round trip (smaller diff for fp32 fine-tunes)")
    writer_options(p)
    p.set_defaults(func=_cmd_make_diff)


# --- quantize: GPTQ and RTN into the GPTQ (v1) format, AWQ into AutoAWQ GEMM ---------------------------------


def _cmd_quantize(args: argparse.Namespace) -> int:
    from camelid.quant import CalibSpec, QuantParams, RunOptions, quantize

    calib = CalibSpec(dataset=args.dataset, dataset_path=args.dataset_path, nsamples=args.nsamples,
                      seq_len=args.seq_len, seed=args.seed, template=args.template)
    options = RunOptions(device=args.device, compute=args.compute_dtype, spill=args.spill, overwrite=args.overwrite,
                         revision=args.revision, max_shard_size=args.max_shard_size)
    params = QuantParams(bits=args.bits, group_size=args.group_size, act_order=args.act_order, damp=args.damp,
                         sym=args.sym, true_sequential=args.true_sequential, static_groups=args.static_groups,
                         mse=args.mse, lm_head=args.lm_head, method=args.method)
    out = quantize(args.model, args.out, params, calib, options)
    print(f"wrote {out}")
    return 0


def _add_quant_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="GPTQ/RTN/AWQ-quantize a Llama model (AutoGPTQ v1 or AutoAWQ GEMM format)",
                       description="Quantize MODEL layer by layer into OUT (GPTQ v1 checkpoint; AutoAWQ GEMM with "
                                   "--method awq). An interrupted run resumes from the last finished layer.")
    p.add_argument("model", help="model folder or Hub repo id")
    p.add_argument("out", help="output folder")
    p.add_argument("--revision", default=None, help="Hub branch/tag/commit of MODEL")
    p.add_argument("--bits", type=int, choices=(2, 3, 4, 8), default=4)
    p.add_argument("--group-size", type=T.group_size, default=128, help="columns per scale/zero group (-1: one group)")
    p.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=False,
                   help="quantize columns in order of decreasing Hessian diagonal (desc_act)")
    p.add_argument("--damp", type=T.float_in(0, 1, high_open=True), default=0.01, help="damping, fraction of the mean Hessian diagonal")
    p.add_argument("--dataset", default="wikitext2", help="wikitext2, code, or a file (.txt/.jsonl/.json)")
    p.add_argument("--dataset-path", default=None, help="local file for a named --dataset")
    p.add_argument("--template", default="alpaca",
                   help="camelid chat template (alpaca, tulu, llama-2-chat, ...) used to render "
                        "instruction/input/output calibration records")
    p.add_argument("--seq-len", type=T.positive_int, default=None,
                   help="tokens per calibration window (default 2048, or the model's context if shorter)")
    p.add_argument("--nsamples", type=T.positive_int, default=128)
    p.add_argument("--sym", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--asym", dest="sym", action="store_false", help="asymmetric grid (same as --no-sym)")
    p.add_argument("--true-sequential", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--static-groups", action="store_true")
    p.add_argument("--mse", action="store_true", help="search a shrunk grid minimising |q - w|^2.4")
    p.add_argument("--lm-head", action="store_true", help="quantize lm_head too (untied models)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=T.non_negative_int, default=0)
    p.add_argument("--method", default="gptq", choices=("gptq", "rtn", "awq"),
                   help="awq: 4-bit, AutoAWQ GEMM checkpoint (AutoAWQ's scale and clip search; "
                        "--bits/--group-size and the calibration options apply, the GPTQ knobs do not)")
    p.add_argument("--spill", action="store_true", help="keep calibration activations on disk, not in RAM")
    p.add_argument("--compute-dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="dtype of the calibration forward passes (auto: bf16 where the hardware has bf16 "
                        "matmul, else fp32); Hessians are always accumulated in fp32")
    p.add_argument("--max-shard-size", default="5GB", type=T.size)
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_cmd_quantize)


# --- generate, chat, eval -----------------------------------------------------------------------------------


def _load_model(args, reference: bool = False):
    from camelid.runtime.load import load

    if reference:  # --revision/--kernel describe the model under test, not its (usually dense) reference
        return load(args.reference, device=args.device, dtype=args.dtype)
    return load(args.model, revision=args.revision, device=args.device, dtype=args.dtype, kernel=args.kernel)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model folder or Hub repo id")
    p.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: the checkpoint's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--revision", default=None, help="Hub branch/tag/commit (e.g. a quantized variant's branch)")
    p.add_argument("--kernel", default="auto", help="quantized matmul kernel (see `camelid info`)")


def _add_template_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--template", default=None,
                   help="prompt template: a camelid chat template (tulu, codellama-70b-instruct, llama-2-chat, "
                        "alpaca, vicuna, chatml), Jinja source, or 'none' for raw prompts; default: the model's "
                        "own chat_template if it has one, else none")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    _add_template_arg(p)
    p.add_argument("--system", type=T.utf8, default=None, help="system message")
    p.add_argument("--max-new-tokens", type=T.positive_int, default=512)
    p.add_argument("--temperature", type=T.float_in(0, math.inf, high_open=True), default=0.7, help="0 = greedy")
    p.add_argument("--top-p", type=T.float_in(0, 1, low_open=True), default=0.95)
    p.add_argument("--top-k", type=T.non_negative_int, default=40, help="0 = off")
    p.add_argument("--repetition-penalty", type=T.float_in(0, math.inf, True, True), default=1.1)
    p.add_argument("--seed", type=T.non_negative_int, default=None)


def _chat_session(args, need_template: bool = False):
    """(model, tokenizer, ids_for(messages), sampler, stops) for generate/chat."""
    from camelid.chat import TEMPLATES, prompt_ids, resolve_template, stop_strings
    from camelid.runtime.sampling import Sampler, SamplingParams
    from camelid.runtime.stops import Stops, eos_token_ids

    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            repetition_penalty=args.repetition_penalty, seed=args.seed)
    model, tok = _load_model(args)
    template = resolve_template(tok, args.template)
    if need_template and template is None:
        raise CamelidError(f"chat needs a prompt template and {args.model} has no chat_template; "
                           f"pass --template, one of: {', '.join(TEMPLATES)}")

    def ids_for(messages: list[dict]) -> list[int]:
        system = [{"role": "system", "content": args.system}] if args.system is not None else []
        return prompt_ids(tok, system + messages, template)

    # One sampler for the session: a chat's turns continue one seeded random stream.
    sampler = Sampler(params, next(model.parameters()).device)
    return model, tok, ids_for, sampler, Stops.of(eos_token_ids(model, tok), stop_strings(template))


def _cmd_generate(args) -> int:
    from camelid.runtime.generate import generate_ids, stream_text

    model, tok, ids_for, sampler, stops = _chat_session(args)
    ids = ids_for([{"role": "user", "content": args.prompt}])
    pieces = stream_text(tok, generate_ids(model, ids, args.max_new_tokens, sampler), stops)
    if args.stream:
        for piece in pieces:
            print(piece, end="", flush=True)
        print()
    else:
        print("".join(pieces))
    return 0


def _cmd_chat(args) -> int:
    from camelid.runtime.generate import generate_ids, stream_text
    from camelid.textio import decode_utf8

    model, tok, ids_for, sampler, stops = _chat_session(args, need_template=True)
    messages: list[dict] = []
    interactive = sys.stdin.isatty()
    print("camelid chat: empty line or Ctrl-D to quit, /reset to forget the conversation", file=sys.stderr)
    while True:
        if interactive:
            print(">>> ", end="", flush=True, file=sys.stderr)
        raw = sys.stdin.buffer.readline()
        if not raw.strip():
            return 0
        try:
            line = decode_utf8(raw, "that line")
        except CamelidError as e:  # one bad line does not end the session
            print(f"camelid: error: {e}; nothing sent", file=sys.stderr)
            continue
        if line.strip() == "/reset":
            messages.clear()
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        try:
            ids = ids_for(messages)
            reply = []
            for piece in stream_text(tok, generate_ids(model, ids, args.max_new_tokens, sampler), stops):
                reply.append(piece)
                print(piece, end="", flush=True)
        except CamelidError as e:  # e.g. the conversation outgrew the context: keep the session alive
            messages.pop()
            print(f"camelid: error: {e} (/reset to start over)", file=sys.stderr)
            continue
        print(flush=True)
        messages.append({"role": "assistant", "content": "".join(reply).strip()})


def _load_eval_model(args, reference: bool = False):
    """A model folder through camelid.load, or a GGUF file through llama.cpp (issue 11: GGUF rows measured)."""
    from camelid.runtime.llamacpp import is_gguf, load_gguf

    path = args.reference if reference else args.model
    if not is_gguf(path):
        return _load_model(args, reference)
    if not reference and (args.revision or args.dtype or args.kernel != "auto"):
        raise CamelidError("--revision, --dtype and --kernel apply to model folders, not GGUF files")
    return load_gguf(path, n_ctx=args.seq_len)


def _cmd_eval_ppl(args) -> int:
    from camelid.eval import perplexity

    text = _eval_text(args)  # a missing or binary data file fails before the model loads
    model, tok = _load_eval_model(args)
    _print_json(perplexity(model, tok, text, args.seq_len, args.doc_sep) | {"model": args.model, "data": args.data})
    return 0


def _cmd_eval_kld(args) -> int:
    from camelid.eval import kl_divergence

    text = _eval_text(args)
    model, tok = _load_eval_model(args)
    ref, _ = _load_eval_model(args, reference=True)
    result = kl_divergence(model, ref, tok, text, args.seq_len, args.doc_sep)
    _print_json(result | {"model": args.model, "reference": args.reference, "data": args.data})
    return 0


def _eval_text(args) -> str:
    from camelid.eval import read_gptq_text
    from camelid.textio import read_text_file

    if args.doc_sep is None:
        return read_gptq_text(args.data)
    return read_text_file(args.data, "eval data")


def _add_runtime_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text from a prompt (streams with --stream)")
    _add_model_args(p)
    p.add_argument("prompt", type=T.utf8, help="the user prompt ('' with --template none: start from BOS)")
    _add_sampling_args(p)
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("chat", help="interactive multi-turn chat on stdin/stdout (streams tokens)")
    _add_model_args(p)
    _add_sampling_args(p)
    p.set_defaults(func=_cmd_chat)

    ev = sub.add_parser("eval", help="perplexity / KL divergence on a text file").add_subparsers(
        dest="eval_command", required=True)
    for name, func, help_ in (("ppl", _cmd_eval_ppl, "perplexity (GPTQ protocol), JSON on stdout"),
                              ("kld", _cmd_eval_kld, "KL divergence and top-1 agreement vs a reference model")):
        p = ev.add_parser(name, help=help_)
        _add_model_args(p)  # MODEL (and --reference) may also be a .gguf file, run by llama.cpp
        if name == "kld":
            p.add_argument("--reference", required=True, help="reference model (e.g. the fp16 original)")
        p.add_argument("--data", required=True, help="text file; scored as '\\n\\n'.join of its lines")
        p.add_argument("--seq-len", type=T.int_at_least(2), default=2048, help="window length (default 2048)")
        p.add_argument("--doc-sep", default=None,
                       help="score each document between these separators on its own (e.g. '<|endoftext|>')")
        p.set_defaults(func=func)


# --- eval TASK: the Tulu paper's benchmarks (issue: evaluate like the Tulu paper) -----------------------


def _eval_settings(args, task: str):
    from camelid.eval import EvalSettings

    return EvalSettings(
        task=task, shots=args.shots, cot=args.cot, closed_book=args.closed_book, limit=args.limit,
        template=args.template, subsets=tuple(s for s in (args.subsets or "").split(",") if s),
        pass_at=args.pass_at, samples=args.samples, temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size,
        judge_url=args.judge, judge_model=args.judge_model, judge_prompt=args.judge_prompt,
    )


def _eval_backend(args):
    from camelid.eval import open_backend

    return open_backend(args.model, endpoint=args.endpoint, api=args.api, api_key=args.api_key,
                        endpoint_model=args.endpoint_model, revision=args.revision, device=args.device,
                        dtype=args.dtype, kernel=args.kernel)


def _cmd_eval_task(args) -> int:
    from camelid.eval import evaluate

    result = evaluate(_eval_backend(args), _eval_settings(args, args.eval_command), args.data, args.out,
                      progress=not args.quiet)
    if args.json:
        _print_json(result)
    else:
        metrics = {k: v for k, v in result["metrics"].items() if not isinstance(v, dict)}
        print(f"{result['setting']}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in metrics.items()))
    return 0


def _cmd_eval_suite(args) -> int:
    from camelid.eval import run_suite
    from camelid.eval.suite import format_row

    suite = run_suite(_eval_backend(args), args.data, _eval_settings(args, "mmlu"), args.out, progress=not args.quiet)
    if args.json:
        _print_json(suite)
    else:
        print(format_row(args.model, suite))
    return 0


def _add_eval_task_commands(sub: argparse._SubParsersAction) -> None:
    ev = next(a for a in sub.choices["eval"]._actions if isinstance(a, argparse._SubParsersAction))
    helps = {"mmlu": "MMLU (0/5-shot, next-token choice)", "gsm8k": "GSM8K (CoT or direct, 200 questions)",
             "bbh": "BIG-Bench Hard (CoT or direct, 40 per task)", "tydiqa": "TyDiQA GoldP (gold passage or closed book)",
             "codex": "HumanEval pass@1/pass@10 in a sandbox", "alpacafarm": "AlpacaFarm win rate vs Davinci-003 (needs --judge)",
             "suite": "all eleven settings, printed as the Tulu cards' row with their Average"}
    for name, help_ in helps.items():
        p = ev.add_parser(name, help=help_ + " (Tulu paper protocol)")
        _add_model_args(p)
        p.add_argument("--data", required=True, help="benchmark data folder" + (
            " holding mmlu/ gsm8k/ bbh/ tydiqa/ humaneval/ alpacafarm/" if name == "suite" else ""))
        p.add_argument("--out", default=None, help="run folder root: records.jsonl (resumable) and results.json")
        p.add_argument("--shots", type=T.int_at_least(0), default=None, help="few-shot examples (default: the paper's)")
        mode = p.add_mutually_exclusive_group()
        mode.add_argument("--cot", dest="cot", action="store_true", default=True, help="chain of thought (default)")
        mode.add_argument("--direct", dest="cot", action="store_false", help="direct answers (GSM8K, BBH)")
        p.add_argument("--closed-book", action="store_true", help="TyDiQA without the passage")
        p.add_argument("--limit", type=T.int_at_least(1), default=None, help="examples per subject/task/language (or in total)")
        p.add_argument("--template", default=None,
                       help="chat template (tulu, ...) or 'none' for plain prompts; default: the paper's "
                            "(tulu; none for codex)")
        p.add_argument("--subsets", default=None, help="comma-separated MMLU subjects / BBH tasks / TyDiQA languages")
        p.add_argument("--pass-at", type=int, default=1, choices=(1, 10), help="Codex run: pass@1 (T 0.1) or @10 (T 0.8)")
        p.add_argument("--samples", type=T.int_at_least(1), default=20, help="Codex samples per problem")
        p.add_argument("--temperature", type=T.float_in(0.0, 100.0), default=None,
                       help="Codex only: override the protocol's sampling temperature")
        p.add_argument("--max-new-tokens", type=T.int_at_least(1), default=None, help="override the protocol's limit")
        p.add_argument("--seed", type=int, default=42)
        p.add_argument("--batch-size", type=T.int_at_least(1), default=16, help="examples per recorded chunk")
        p.add_argument("--endpoint", default=None,
                       help="evaluate a served model: TGI URL (http://host:port) or OpenAI-compatible (…/v1); "
                            "MODEL then only supplies the tokenizer")
        p.add_argument("--api", default=None, choices=("tgi", "openai"), help="endpoint API (default: from the URL)")
        p.add_argument("--api-key", default=None)
        p.add_argument("--endpoint-model", default=None, help="model name sent to an OpenAI-compatible endpoint")
        p.add_argument("--judge", default=None, help="AlpacaFarm judge: OpenAI-compatible chat endpoint (…/v1)")
        p.add_argument("--judge-model", default=None)
        p.add_argument("--judge-prompt", default=None, help="file replacing the judge prompt")
        p.add_argument("--json", action="store_true", help="print the full results JSON")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.set_defaults(func=_cmd_eval_suite if name == "suite" else _cmd_eval_task)


# --- export: GGUF for llama.cpp -----------------------------------------------------------------------------


def _cmd_export_gguf(args: argparse.Namespace) -> int:
    from camelid.export import GGUFExport, export_gguf

    settings = GGUFExport(types=tuple(args.types.split(",")), name=args.name, chat_template=args.template,
                          threads=args.threads, overwrite=args.overwrite)
    for path in export_gguf(args.model, args.out, settings, revision=args.revision):
        print(f"wrote {path} ({path.stat().st_size / 1e6:,.1f} MB)")
    return 0


def _add_export_commands(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("export", help="write a model in another runtime's format (GGUF for llama.cpp)")
    p = ex.add_subparsers(dest="export_format", required=True).add_parser(
        "gguf", help="HF Llama -> OUT/<name>.<TYPE>.gguf per type (K-quants through llama.cpp's quantizer)")
    p.add_argument("model", help="model folder or Hub repo id (floating point, not quantized)")
    p.add_argument("out", help="output folder")
    p.add_argument("--types", default="f16",
                   help="comma-separated: f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0 (written by camelid); "
                        "q6_k, q5_k_m, q5_k_s, q4_k_m, q4_k_s, q3_k_l, q3_k_m, q3_k_s, q2_k (llama.cpp, the "
                        "gguf extra); default f16")
    p.add_argument("--name", default=None, help="file name stem (default: the model's name, lower-cased)")
    p.add_argument("--template", default=None,
                   help="chat template to embed: a camelid template name (tulu, ...) or Jinja "
                        "(default: the model's own chat_template, if any)")
    p.add_argument("--threads", type=T.int_at_least(0), default=0, help="llama.cpp quantizer threads (0: all cores)")
    p.add_argument("--revision", default=None, help="Hub branch/tag/commit of MODEL")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.set_defaults(func=_cmd_export_gguf)


# --- serve --------------------------------------------------------------------------------------------------


def _add_serve_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP (TGI- and OpenAI-compatible routes)")
    p.add_argument("model", help="model folder or Hub repo id")
    p.add_argument("--revision", default=None)
    _add_template_arg(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=T.port, default=3000)
    p.add_argument("--max-input-tokens", "--max-input-length", dest="max_input_tokens", type=T.positive_int,
                   default=None)
    p.add_argument("--max-total-tokens", type=T.positive_int, default=None)
    p.add_argument("--max-batch-prefill-tokens", type=T.positive_int, default=None)
    p.add_argument("--max-concurrent-requests", type=T.positive_int, default=128)
    p.add_argument("--max-stop-sequences", type=T.non_negative_int, default=4)
    p.add_argument("--max-best-of", type=T.positive_int, default=2)
    p.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on every route but /health")
    p.add_argument("--threads", type=T.positive_int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from camelid.serve import serve

    serve(
        args.model,
        revision=args.revision,
        template=args.template,
        host=args.host,
        port=args.port,
        max_input_tokens=args.max_input_tokens,
        max_total_tokens=args.max_total_tokens,
        max_batch_prefill_tokens=args.max_batch_prefill_tokens,
        max_concurrent_requests=args.max_concurrent_requests,
        max_stop_sequences=args.max_stop_sequences,
        api_key=args.api_key,
        max_best_of=args.max_best_of,
        threads=args.threads,
        device=args.device,
    )
    return 0


# --- release (issue: release) --------------------------------------------------------------------------


def _cmd_release(args: argparse.Namespace) -> int:
    from pathlib import Path

    from camelid.checkpoint import resolve_model_dir
    from camelid.quant import RunOptions
    from camelid.release import CardInfo, EvalSpec, load_matrix, plan_json, plan_release, resolve_rows
    from camelid.release.performance import SuiteSpec
    from camelid.release.repos import ReleaseRun, build_repositories, plan_siblings
    from camelid.release.siblings import ReleaseFormats

    config = json.loads((resolve_model_dir(args.src, args.revision) / "config.json").read_text())
    rows = resolve_rows(load_matrix(args.matrix), config.get("max_position_embeddings"), only=args.only,
                        seq_len=args.seq_len, nsamples=args.nsamples, dataset=args.dataset,
                        dataset_path=args.dataset_path)
    spec = ReleaseFormats(formats=tuple(args.formats.split(",")), gguf_types=tuple(args.gguf_types.split(",")))
    card = CardInfo(name=args.name or Path(args.src).name, creator=args.creator, original_repo=args.original_repo,
                    license=args.license, template=args.template, repo_id=args.repo_id or args.push,
                    quantized_by=args.quantized_by)
    if args.plan and not spec.single:
        out = Path(args.out or ".")
        table = plan_siblings(args.src, out, rows, card, spec, RunOptions(max_shard_size=args.max_shard_size))
        if args.json:
            _print_json(table)
            return 0
        for sib in table:
            print(f"{sib['repo']}  ({sib['format']}, folder {sib['folder']})")
            for entry in sib.get("branches", []):
                print(f"  {entry['branch']:34s} {entry['size_bytes']:15,d} B {entry['size_bytes'] / 1e9:6.2f} GB")
            for f in sib.get("files", []):
                size = f["planned_size_bytes"]
                print(f"  {f['file']:34s} " + (f"{size:15,d} B {size / 1e9:6.2f} GB" if size is not None
                                                else "    (llama.cpp's mix: size known once written)"))
        return 0
    plans = plan_release(config, rows, args.max_shard_size)
    if args.plan:
        table = plan_json(plans)
        if args.json:
            _print_json(table)
            return 0
        print(f"{'branch':34s} {'bits':>4s} {'gs':>5s} {'act':>5s} {'damp':>5s} {'seq':>5s} {'size (bytes)':>15s} {'GB':>6s}")
        for r in table:
            print(f"{r['branch']:34s} {r['bits']:4d} {r['group_size']:5d} {r['act_order']!s:>5s} {r['damp']:5.2f} "
                  f"{r['seq_len']:5d}{'*' if r['seq_len_requested'] else ' '}{r['size_bytes']:15,d} "
                  f"{r['size_bytes'] / 1e9:6.2f}")
        if any(r["seq_len_requested"] for r in table):
            print(f"* capped to the model's context of {config.get('max_position_embeddings')} tokens")
        return 0
    if args.out is None:
        raise CamelidError("OUT is required unless --plan")
    options = RunOptions(device=args.device, revision=args.revision, max_shard_size=args.max_shard_size,
                         progress=not args.quiet)
    run = ReleaseRun(options, EvalSpec(data=args.eval_data, seq_len=args.eval_seq_len, windows=args.eval_windows),
                     args.executor, args.ray_address)
    suite = SuiteSpec(data=args.suite_data, limit=args.suite_limit, attach=tuple(args.performance or ()))
    records = build_repositories(args.src, args.out, rows, card, spec, run, suite)
    for fmt, record in records.items():
        for name, entry in _measured_rows(fmt, record):
            m = entry["measured"]
            print(f"{fmt:5s} {name:34s} {entry['size_bytes']:>13,d} B  KL {m['kld_mean']:.4f}  top-1 "
                  f"{m['top1_agreement_pct']:5.1f}%  ppl {m['ppl']:.3f}  {'built' if entry.get('built', record.get('built')) else 'kept'}")
    if spec.single:
        print(f"card: {Path(args.out) / next(iter(records['gptq']['branches'])) / 'README.md'}")
    else:
        from camelid.release.siblings import siblings

        for sib in siblings(Path(args.out), spec, card.repo_id, Path(args.src).name):
            print(f"card: {sib.folder / ('main' if sib.format == 'gptq' else '') / 'README.md'}")
    if args.push:
        from camelid.release.push import push_release, push_repositories

        pushed = push_release(args.out, args.push, private=args.private) if spec.single else push_repositories(
            args.out, private=args.private)
        print(json.dumps(pushed))
    return 0


def _measured_rows(fmt: str, record: dict) -> list[tuple[str, dict]]:
    if fmt == "gptq":
        return list(record["branches"].items())
    if fmt == "gguf":
        return [(f["file"], f) for f in record["files"]]
    return [("main", record)]


def _add_release_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("release", help="build the variant matrix as branches of one release, measured, with a card")
    p.add_argument("src", help="source model folder or Hub repo id (fp16)")
    p.add_argument("out", nargs="?", help="release folder (one subfolder per branch)")
    p.add_argument("--revision", default=None, help="Hub branch/tag/commit of SRC")
    p.add_argument("--matrix", default="llama", help="llama (default), code, or a TOML/YAML matrix file")
    p.add_argument("--only", nargs="+", metavar="BRANCH", help="build only these branches of the matrix")
    p.add_argument("--formats", default="gptq",
                   help="repositories to build, comma-separated: gptq (default), awq, gguf, fp16; with more than "
                        "gptq, OUT holds one folder per repository (<Name>-GPTQ, <Name>-AWQ, <Name>-GGUF, <Name>)")
    p.add_argument("--gguf-types", default="q4_k_m,q8_0",
                   help="GGUF files of the gguf repository (default q4_k_m,q8_0; needs llama-cpp-python: "
                        "camelid[gguf])")
    p.add_argument("--plan", action="store_true", help="print each branch's settings and exact size; build nothing")
    p.add_argument("--json", action="store_true", help="with --plan: JSON, one object per branch")
    p.add_argument("--name", help="model name for the card (default: SRC's folder name)")
    p.add_argument("--creator", help="model creator, e.g. 'Allen Institute for AI'")
    p.add_argument("--original-repo", help="Hub id of the original model (the card's base_model)")
    p.add_argument("--license", help="license id for the card, e.g. other, apache-2.0")
    p.add_argument("--template", help="camelid prompt template shipped in every branch and shown on the card")
    p.add_argument("--quantized-by", default="camelid")
    p.add_argument("--dataset", help="calibration set for every row (wikitext2, code, or a file)")
    p.add_argument("--dataset-path", help="local file for a named --dataset")
    p.add_argument("--seq-len", type=int, help="calibration seq len for every row (capped to the context)")
    p.add_argument("--nsamples", type=int, help="calibration samples for every row")
    p.add_argument("--eval-data", help="held-out text to measure on (default: calibration text no window used)")
    p.add_argument("--eval-seq-len", type=int, help="measurement window (default: the rows' shortest seq len)")
    p.add_argument("--eval-windows", type=int, default=16, help="measurement windows (default 16)")
    p.add_argument("--suite-data", metavar="DIR",
                   help="eval data root (mmlu/ gsm8k/ bbh/ ...): run `camelid eval suite` on the source and each "
                        "variant and put the Performance table on the cards (resumable, under OUT/.camelid/eval)")
    p.add_argument("--suite-limit", type=T.positive_int, help="with --suite-data: examples per subject/task (smoke runs)")
    p.add_argument("--performance", nargs="+", metavar="[LABEL=]RESULTS.json",
                   help="attach rows from earlier `camelid eval suite --json` results to the Performance table")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--max-shard-size", default="5GB")
    p.add_argument("--executor", default="local", choices=("local", "ray"))
    p.add_argument("--ray-address", default=None, help="existing Ray cluster (with --executor ray)")
    p.add_argument("--repo-id", help="Hub id the card's examples use (default: --push, else OUT's name)")
    p.add_argument("--push", metavar="REPO_ID", help="upload every branch to this Hub repo")
    p.add_argument("--private", action="store_true", help="with --push: create the repo private")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_release)


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line naming the culprit, like every other camelid error (argparse adds a usage block)."""
        command = self.prog.removeprefix("camelid").strip()
        self.exit(2, f"camelid: error: {command + ': ' if command else ''}{message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="camelid", description=__doc__)
    parser.add_argument("--version", action="version", version=f"camelid {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_checkpoint_commands(sub)
    _add_quant_commands(sub)
    _add_runtime_commands(sub)
    _add_eval_task_commands(sub)
    _add_export_commands(sub)
    _add_serve_commands(sub)
    _add_release_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CamelidError as e:
        print(f"camelid: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("camelid: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or an environment failure camelid did not foresee: one line, exit 1
        if args.debug:
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"camelid: error: unexpected {type(e).__name__}: {first} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
