// cachesvc: the KVStash cache service daemon. See kvstash/cachesvc/server.h for what it runs and
// kvstash/cachesvc/config.h for its settings; SIGTERM or SIGINT shut it down gracefully (exit 0).
#include <signal.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <string>

#include "kvstash/cachesvc/config.h"
#include "kvstash/cachesvc/server.h"

int main(int argc, char** argv) {
  kvstash::cachesvc::ParsedCommandLine parsed = kvstash::cachesvc::ParseCommandLine(argc, argv);
  if (!parsed.config) {
    std::fputs(parsed.output.c_str(), parsed.exit_code == 0 ? stdout : stderr);
    return parsed.exit_code;
  }
  const kvstash::cachesvc::ServiceConfig& config = *parsed.config;

  auto logger = spdlog::stderr_logger_mt("cachesvc");
  spdlog::set_default_logger(logger);
  // key=value records after a fixed prefix: easy to grep, easy for log shippers to parse.
  spdlog::set_pattern("ts=%Y-%m-%dT%H:%M:%S.%f%z level=%l pid=%P tid=%t %v");
  spdlog::set_level(spdlog::level::from_str(config.log_level));

  // Block the shutdown signals before any thread exists, so every thread inherits the mask and
  // only the sigwait below ever sees them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto service = kvstash::cachesvc::CacheService::Start(config);
  if (!service.ok()) {
    spdlog::critical("event=start_failed error=\"{}\"", std::string(service.status().message()));
    return 1;
  }
  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info("event=signal signal={}", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  kvstash::Status closed = (*service)->Shutdown();
  service->reset();
  spdlog::shutdown();
  return closed.ok() ? 0 : 1;
}
