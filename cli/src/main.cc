// kvstash: command-line client for cachesvc, plus the reference engine and codec tools.
#include <cstdio>
#include <exception>

#include "commands.h"

namespace kvstash::cli {
int& ExitCode() {
  static int code = 0;
  return code;
}
}  // namespace kvstash::cli

namespace {

int Run(int argc, char** argv) {
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

}  // namespace

int main(int argc, char** argv) {
  // The subcommands report failures through statuses; an exception that still gets here (an
  // allocation failure, a CLI11 or library error) is a failure (1) that says what it was,
  // instead of std::terminate's abort.
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvstash: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "kvstash: unknown exception\n");
  }
  return 1;
}
