/**
 * Tokenizers and chat templates read from GGUF files, with llama.cpp's
 * behaviour.
 *
 * @example
 * ```ts ignore
 * import { loadTokenizer, renderChat } from "./mod.ts";
 * const tok = loadTokenizer("model.gguf");
 * const prompt = renderChat(tok, [{ role: "user", content: "Hello!" }]);
 * const ids = tok.encode(prompt);
 * const dec = tok.createStreamDecoder({ skipSpecial: true });
 * for (const id of ids) Deno.stdout.writeSync(new TextEncoder().encode(dec.push(id)));
 * ```
 *
 * @module
 */

export {
  type DecodeOptions,
  type EncodeOptions,
  loadTokenizer,
  type StreamDecoder,
  SUPPORTED_MODELS,
  SUPPORTED_PRE_TOKENIZERS,
  TokenAttr,
  Tokenizer,
} from "./tokenizer.ts";
export {
  applyChatTemplate,
  type ChatMessage,
  CHATML_TEMPLATE,
  ChatTemplate,
  ChatTemplateError,
  type ChatTemplateOptions,
  renderChat,
} from "./chat.ts";
