// Subcommands of the `kvstash` CLI. Each module's commands live in their own file and register
// themselves here; a subcommand returns the process exit code (0 ok, 1 failure, 2 usage error)
// and prints errors as "kvstash <cmd>: <message>" on stderr.
#ifndef KVSTASH_CLI_COMMANDS_H_
#define KVSTASH_CLI_COMMANDS_H_

#include <CLI/CLI.hpp>
#include <functional>

namespace kvstash::cli {

// Set by a subcommand's callback; main() returns it.
int& ExitCode();

void RegisterGenerateCommand(CLI::App& app);  // generate_command.cc (reference engine)
// `kvstash workload`: chat workload through the KV connector (workload_command.cc).
void RegisterWorkloadCommand(CLI::App& app);
// put, get, stat, ls, rm, bench, synth (store_commands.cc).
void RegisterStoreCommands(CLI::App& app);
// `kvstash codec ...` (codec_commands.cc).
void RegisterCodecCommands(CLI::App& app);

}  // namespace kvstash::cli

#endif  // KVSTASH_CLI_COMMANDS_H_
