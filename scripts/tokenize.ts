/**
 * `deno task tokenize --model M.gguf (--text S | --file F) [--no-special] [--json]`:
 * the token ids of a text as llama.cpp tokenises it for that model — BOS
 * (and EOS) added when the file says so, special-token text such as
 * `<|im_start|>` read as one token unless `--no-special`.
 *
 * With `--json` it prints `{"ids": [...]}`; without, one line per token
 * (id and piece). Exits 2 on bad flags, 1 when the file cannot be read or
 * its tokenizer is not supported.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { loadTokenizer, type Tokenizer } from "../src/tokenizer/tokenizer.ts";

const USAGE =
  "usage: deno task tokenize --model M.gguf (--text S | --file F) [--no-special] [--json]";

/** The parsed command line of the tokenize task. */
export interface TokenizeArgs {
  /** The GGUF file. */
  model: string;
  /** The text, from `--text` or read from `--file`. */
  text: string;
  /** Read special-token text as special tokens (false with `--no-special`). */
  parseSpecial: boolean;
  /** Print `{"ids": [...]}`. */
  json: boolean;
}

/** A command-line mistake, reported with the usage line and exit code 2. */
export class UsageError extends Error {}

/**
 * Parses the task's arguments.
 *
 * @throws {UsageError} naming the missing or unknown flag.
 */
export function parseTokenizeArgs(argv: string[]): Omit<TokenizeArgs, "text"> & {
  text?: string;
  file?: string;
} {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        model: { type: "string" },
        text: { type: "string" },
        file: { type: "string" },
        "no-special": { type: "boolean", default: false },
        json: { type: "boolean", default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    throw new UsageError(e instanceof Error ? e.message : String(e));
  }
  if (values.model === undefined) throw new UsageError("missing --model M.gguf");
  if ((values.text === undefined) === (values.file === undefined)) {
    throw new UsageError("give exactly one of --text S and --file F");
  }
  return {
    model: values.model,
    text: values.text,
    file: values.file,
    parseSpecial: !values["no-special"],
    json: values.json,
  };
}

/** The token ids of `text`, as `llama_tokenize(…, add_special = true, parse_special)` returns them. */
export function tokenizeText(tok: Tokenizer, text: string, parseSpecial: boolean): number[] {
  return tok.encode(text, { addSpecial: true, parseSpecial });
}

function fail(message: string, code: number): never {
  console.error(`tokenize: ${message}`);
  if (code === 2) console.error(USAGE);
  Deno.exit(code);
}

if (import.meta.main) {
  let args;
  try {
    args = parseTokenizeArgs(Deno.args);
  } catch (e) {
    fail(e instanceof Error ? e.message : String(e), e instanceof UsageError ? 2 : 1);
  }
  let text = args.text;
  if (text === undefined) {
    try {
      text = await Deno.readTextFile(args.file!);
    } catch (e) {
      fail(
        e instanceof Deno.errors.NotFound
          ? `text file not found: ${args.file}`
          : `cannot read ${args.file}: ${e instanceof Error ? e.message : e}`,
        1,
      );
    }
  }
  let tok: Tokenizer;
  try {
    tok = loadTokenizer(args.model);
  } catch (e) {
    fail(e instanceof Error ? e.message : String(e), 1);
  }
  const ids = tokenizeText(tok, text, args.parseSpecial);
  if (args.json) {
    console.log(JSON.stringify({ ids }));
  } else {
    const dec = new TextDecoder();
    for (const id of ids) {
      console.log(`${String(id).padStart(7)}  ${JSON.stringify(dec.decode(tok.tokenToBytes(id)))}`);
    }
  }
}
