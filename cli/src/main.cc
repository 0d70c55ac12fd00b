// kvstash: command-line client for cachesvc, plus the reference engine and codec tools.
#include <cstdio>

#include "commands.h"

namespace kvstash::cli {
int& ExitCode() {
  static int code = 0;
  return code;
}
}  // namespace kvstash::cli

int main(int argc, char** argv) {
  CLI::App app{"kvstash: KV-cache store client, reference engine and codec tools"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "kvstash 0.1.0");
  // Subcommand registration, one line per module (see commands.h).
  kvstash::cli::RegisterGenerateCommand(app);
  kvstash::cli::RegisterWorkloadCommand(app);
  kvstash::cli::RegisterCodecCommands(app);
  kvstash::cli::RegisterStoreCommands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help/--version exit 0; every other parse error is a usage error (commands.h).
    return app.exit(e) == 0 ? 0 : 2;
  }
  return kvstash::cli::ExitCode();
}
