"""Running models: one prompt streamed, or an interactive chat."""

from __future__ import annotations

import sys

from ..errors import OficinaError
from ..options import Options
from .common import option_flags, options_from
from .prompt import parse_vars


def run(args) -> int | None:
    opts = options_from(args)  # checked before torch is even imported

    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..api import load

    prompt = args.prompt
    if args.prompt_name:  # a library prompt (oficina prompt): rendered, its parameters under the flags'
        prompt, opts = _library_prompt(args, prompt, opts)
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read()
    model = load(args.name, **opts)
    if prompt is None:
        return _chat_loop(model, args)
    out = sys.stdout
    answer = model.stream(prompt, raw=args.raw, system=args.system)
    for piece in answer:
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    if args.verbose:
        _print_stats(answer.stats, model)
    elif answer.stats and answer.stats.done_reason.startswith("guard:"):
        print(f"stopped by a guard: {answer.stats.done_reason}", file=sys.stderr)
    for v in answer.verdicts:
        if v.verdict in ("flag", "redact"):
            print(f"{v.guard}: {v.verdict} {v.category} ({len(v.spans)} span(s))", file=sys.stderr)
    return None


def _library_prompt(args, text, opts):
    # here, not at the top: loads jinja2/yaml (`oficina --help` stays light)
    from ..prompts import PromptStore

    if text is not None:
        raise OficinaError("give either a prompt text or --prompt NAME, not both")
    p = PromptStore().get(args.prompt_name)
    return p.render(parse_vars(args.var)), {**p.spec.parameters, **opts}


def _print_stats(s, model=None) -> None:
    if s is None:
        return
    err = sys.stderr
    rate = lambda n, t: f"{n / t:.2f} tokens/s" if t > 0 else "-"
    if model is not None and not getattr(model, "_said_runner", False):
        caps = model.runner.capabilities  # which runner, and why (once)
        print(f"runner:               {caps.note or caps.name} ({caps.weights}; {caps.dtype})", file=err)
        model._said_runner = True
    if s.load_seconds:
        print(f"load duration:        {s.load_seconds:.3f}s", file=err)
    print(f"prompt eval count:    {s.prompt_tokens} token(s)", file=err)
    print(f"prompt eval duration: {s.prompt_seconds:.3f}s", file=err)
    print(f"prompt eval rate:     {rate(s.prompt_tokens, s.prompt_seconds)}", file=err)
    print(f"eval count:           {s.eval_tokens} token(s)", file=err)
    print(f"eval duration:        {s.eval_seconds:.3f}s", file=err)
    print(f"eval rate:            {rate(s.eval_tokens, s.eval_seconds)}", file=err)
    print(f"done reason:          {s.done_reason}", file=err)


CHAT_HELP = """commands:
  /set parameter NAME VALUE   change a parameter (e.g. /set parameter temperature 0.2)
  /set system TEXT            set the system message
  /show parameters            the parameters in use
  /clear                      forget the conversation
  /bye                        leave (Ctrl-D too)"""


def _chat_loop(model, args) -> int:
    history: list[dict[str, str]] = []
    opts = model.options  # this loop's own: /set makes a new one, the model's stay as loaded
    if args.system:
        history.append({"role": "system", "content": args.system})
    print(f"chatting with {args.name}; /? for help, /bye to leave", file=sys.stderr)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            continue
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            parts = text.split(maxsplit=3)
            try:
                if parts[0] in ("/bye", "/exit"):
                    return 0
                if parts[0] == "/clear":
                    history = [m for m in history if m["role"] == "system"]
                    print("conversation cleared")
                elif parts[:2] == ["/set", "parameter"] and len(parts) == 4:
                    opts = Options.from_pairs([(parts[2], parts[3])], base=opts)
                    print(f"set {parts[2]} to {parts[3]}")
                elif parts[:2] == ["/set", "system"] and len(parts) >= 3:
                    value = text.split(maxsplit=2)[2]
                    history = [m for m in history if m["role"] != "system"]
                    history.insert(0, {"role": "system", "content": value})
                    print("system message set")
                elif parts[:2] == ["/show", "parameters"]:
                    for k, v in opts.to_dict().items():
                        print(f"{k:<20} {v}")
                else:
                    print(CHAT_HELP)
            except OficinaError as e:
                print(f"error: {e}", file=sys.stderr)
            continue
        history.append({"role": "user", "content": text})
        reply = model.chat_stream(history, **opts.to_dict())
        try:
            for piece in reply:
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass
        print("\n")
        history.append({"role": "assistant", "content": reply.text})
        if args.verbose:
            _print_stats(reply.stats, model)


def register(sub) -> None:
    s = sub.add_parser("run", help="generate from a prompt, or chat when no prompt is given")
    s.add_argument("name")
    s.add_argument("prompt", nargs="?")
    s.add_argument("--raw", action="store_true", help="do not apply the chat template")
    s.add_argument("--system", help="system message")
    s.add_argument("--verbose", action="store_true", help="print timings after the answer")
    s.add_argument("--prompt", dest="prompt_name", metavar="NAME",
                   help="a library prompt (NAME, NAME@VERSION, NAME:LABEL; see oficina prompt)")
    s.add_argument("--var", action="append", metavar="NAME=VALUE", help="a --prompt variable (repeatable)")
    option_flags(s)
    s.set_defaults(func=run)
